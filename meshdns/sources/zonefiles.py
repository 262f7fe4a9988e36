"""Parsers for the files in zones/: TOML catalogs and RFC 1035 master files.

Bytes in, values out; every error names the file and line so an operator can
fix it while the previous content keeps being served.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.zone
import dns.zonefile

from ..catalog import validate
from ..catalog.model import Health, Instance, Intention, Node, Split, Zone, ZoneRecord
from ..catalog.validate import FieldError
from ..config import ConfigError, parse_duration
from ..health.spec import CheckSpec, parse_check


class ZoneFileError(ValueError):
    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass(frozen=True)
class TomlContent:
    nodes: tuple[Node, ...] = ()
    instances: tuple[Instance, ...] = ()
    splits: tuple[Split, ...] = ()
    checks: tuple[tuple[str, CheckSpec], ...] = ()  # (instance id, check)
    # where each service came from, to report cross-file errors at the right line
    lines: dict[str, int] = field(default_factory=dict)
    # ids of instances placed on a node with no `datacenter` of their own: they live in the node's
    node_dc: frozenset[str] = frozenset()
    intentions: tuple[Intention, ...] = ()


_TABLE_RE = re.compile(r"^\s*\[\[\s*(node|service|split|intention)\s*\]\]")
_TOP_KEYS = {"node", "service", "split", "intention"}
_NODE_KEYS = {"name", "address", "meta", "datacenter"}
_SERVICE_KEYS = {"name", "id", "node", "address", "port", "tags", "meta", "weights", "check", "datacenter"}
_SPLIT_KEYS = {"name", "targets", "ttl", "on_all_unhealthy"}
_INTENTION_KEYS = {"name", "sources"}
_INTENTION_SOURCE_KEYS = {"name", "action"}


def _table_lines(text: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {"node": [], "service": [], "split": [], "intention": []}
    for n, line in enumerate(text.splitlines(), 1):
        m = _TABLE_RE.match(line)
        if m:
            found[m.group(1)].append(n)
    return found


def parse_toml(path: str, text: str, *, datacenter: str, source: str) -> TomlContent:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ZoneFileError(path, int(m.group(1)) if m else 1, str(exc)) from None
    lines = _table_lines(text)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ZoneFileError(path, 1, f"unknown top-level key {unknown[0]!r} (expected [[node]], [[service]], [[split]], "
                                       "[[intention]])")

    def items(kind: str):
        raw = data.get(kind, [])
        if not isinstance(raw, list):
            raise ZoneFileError(path, 1, f"{kind!r} must be an array of tables ([[{kind}]])")
        for i, item in enumerate(raw):
            line = lines[kind][i] if i < len(lines[kind]) else 1
            if not isinstance(item, dict):
                raise ZoneFileError(path, line, f"{kind}[{i}] must be a table")
            yield i, line, item

    def check_keys(item: dict, allowed: set, label: str, line: int) -> None:
        extra = sorted(set(item) - allowed)
        if extra:
            raise ZoneFileError(path, line, f"{label}.{extra[0]}: unknown key")

    nodes, instances, splits, checks, where, node_dc = [], [], [], [], {}, set()
    for i, line, item in items("node"):
        label = f"node[{i}]"
        check_keys(item, _NODE_KEYS, label, line)
        try:
            nodes.append(Node(
                name=validate.node_name(item.get("name"), f"{label}.name"),
                address=validate.address(item.get("address"), f"{label}.address"),
                datacenter=_dc(item, label, datacenter),
                meta=validate.meta(item.get("meta"), f"{label}.meta"),
                source=source))
        except FieldError as exc:
            raise ZoneFileError(path, line, str(exc)) from None
        if not nodes[-1].address:
            raise ZoneFileError(path, line, f"{label}.address: required")
    for i, line, item in items("service"):
        label = f"service[{i}]"
        check_keys(item, _SERVICE_KEYS, label, line)
        try:
            inst, check = _service(item, label, datacenter, source)
        except FieldError as exc:
            raise ZoneFileError(path, line, str(exc)) from None
        if inst.id in where:
            raise ZoneFileError(path, line, f"{label}.id: duplicate id {inst.id!r}")
        where[inst.id] = line
        instances.append(inst)
        if inst.node and "datacenter" not in item:
            node_dc.add(inst.id)
        if check is not None:
            checks.append((inst.id, check))
    for i, line, item in items("split"):
        label = f"split[{i}]"
        check_keys(item, _SPLIT_KEYS, label, line)
        try:
            ttl = item.get("ttl")
            ttl = parse_duration(ttl, key=f"{label}.ttl") if ttl is not None else None
            splits.append(validate.split(item.get("name"), item.get("targets"), field=label, ttl=ttl,
                                         on_all_unhealthy=item.get("on_all_unhealthy", "nxdomain"),
                                         source=source, local_datacenter=datacenter))
        except (FieldError, ConfigError) as exc:
            raise ZoneFileError(path, line, str(exc)) from None
        where["split:" + splits[-1].name] = line
    intentions: dict[str, Intention] = {}
    for i, line, item in items("intention"):
        label = f"intention[{i}]"
        check_keys(item, _INTENTION_KEYS, label, line)
        sources = item.get("sources", [])
        for j, src in enumerate(sources if isinstance(sources, list) else ()):
            if isinstance(src, dict):
                check_keys(src, _INTENTION_SOURCE_KEYS, f"{label}.sources[{j}]", line)
        try:
            entry = validate.intention(item.get("name"), sources, field=label, source=source)
        except FieldError as exc:
            raise ZoneFileError(path, line, str(exc)) from None
        if entry.name in intentions:
            raise ZoneFileError(path, line, f"{label}.name: a second [[intention]] for {entry.name!r} "
                                            "(list every source in one)")
        intentions[entry.name] = entry
    return TomlContent(tuple(nodes), tuple(instances), tuple(splits), tuple(checks), where, frozenset(node_dc),
                       tuple(intentions.values()))


def _dc(item: dict, label: str, default: str) -> str:
    dc = item.get("datacenter")
    return validate.dns_label(dc, f"{label}.datacenter").lower() if dc is not None else default


def _service(item: dict[str, Any], label: str, datacenter: str, source: str) -> tuple[Instance, CheckSpec | None]:
    name = validate.service_name(item.get("name"), f"{label}.name")
    node = item.get("node")
    if node is not None:
        node = validate.node_name(node, f"{label}.node")
    addr = validate.service_address(item.get("address"), f"{label}.address")
    if not node and not addr:
        raise FieldError(f"{label}.node", "a service needs a node or an address")
    port = validate.port(item.get("port", 0), f"{label}.port")
    sid = item.get("id") or f"{name}-{node or addr}"
    if not isinstance(sid, str):
        raise FieldError(f"{label}.id", "expected a string")
    check = parse_check(item["check"], f"{label}.check") if "check" in item else None
    inst = Instance(
        id=sid, service=name, datacenter=_dc(item, label, datacenter), address=addr, port=port,
        node=node or "", tags=validate.tags(item.get("tags"), f"{label}.tags"),
        meta=validate.meta(item.get("meta"), f"{label}.meta"),
        weights=validate.weights(item.get("weights"), f"{label}.weights"),
        health=Health.PASSING if check is None else check.initial, source=source)
    return inst, check


# ---------------------------------------------------------------------------
# RFC 1035 master files, read by dnspython ($INCLUDE, $GENERATE, parentheses, escapes)

MAX_INCLUDES = 64   # per zone file: an $INCLUDE loop is an error, not a hang
_LOCATED = re.compile(r"^(.*?):(\d+): (.*)$", re.S)


class _Tokenizer(dns.tokenizer.Tokenizer):
    """Resolves the file named by $INCLUDE against the directory of the file that includes it (not the
    working directory), and records it so that a change to it reloads the zone. `where()` is the line of
    the last token read (dnspython's counts the newline it looked ahead at)."""

    def __init__(self, f, filename: str, included: list[Path]):
        super().__init__(f, filename)
        self.included = included
        self._after_include = False
        self._line = 1

    def where(self) -> tuple[str, int]:
        return self.filename, self._line

    def get(self, want_leading: bool = False, want_comment: bool = False) -> dns.tokenizer.Token:
        token = super().get(want_leading, want_comment)
        if token.is_eol():
            self._line = self.line_number - 1
        elif not token.is_eof():
            self._line = self.line_number - (self.ungotten_char == "\n")
        if self._after_include and (token.is_identifier() or token.is_quoted_string()):
            if len(self.included) >= MAX_INCLUDES:
                raise dns.exception.SyntaxError(f"more than {MAX_INCLUDES} $INCLUDEs (does a file include itself?)")
            path = Path(self.filename).parent / token.value
            self.included.append(path)
            token = dns.tokenizer.Token(token.ttype, str(path))
        self._after_include = token.is_identifier() and token.value.upper() == "$INCLUDE"
        return token


class _Reader(dns.zonefile.Reader):
    """dnspython's reader; the tokenizer it makes for an $INCLUDEd file resolves that file's $INCLUDEs too."""

    @property
    def tok(self) -> _Tokenizer:
        return self._tok

    @tok.setter
    def tok(self, tok: dns.tokenizer.Tokenizer) -> None:
        if not isinstance(tok, _Tokenizer):
            tok = _Tokenizer(tok.file, tok.filename, self._tok.included)
        self._tok = tok

    def _rr_line(self) -> None:
        """dnspython skips a record outside the zone without a word; here it is an error."""
        token = self.tok.get(want_leading=True)
        self.tok.unget(token)
        if self.zone_origin is not None and not token.is_whitespace():
            name = dns.name.from_text(token.value, self.current_origin, self.tok.idna_codec)
            if not name.is_subdomain(self.zone_origin):
                raise dns.exception.SyntaxError(f"{name.to_text().lower()} is outside the zone "
                                                f"{self.zone_origin.to_text().lower()}")
        super()._rr_line()


def parse_master(path: str, text: str, *, default_origin: str, source: str,
                 included: list[Path] | None = None) -> Zone:
    """The zone in `text` (read from `path`); its origin is the first $ORIGIN if one comes before any record,
    else `default_origin` (from the file name). `included` gets the path of every file it $INCLUDEs."""
    origin = None if _starts_with_origin(text) else dns.name.from_text(default_origin)
    zone = dns.zone.Zone(origin, relativize=False)
    tok = _Tokenizer(text, path, included if included is not None else [])
    reader = None
    try:
        with zone.writer(replacement=True) as txn:
            reader = _Reader(tok, dns.rdataclass.IN, txn, allow_include=True, default_ttl=3600)
            reader.read()
    except dns.exception.SyntaxError as exc:
        m = _LOCATED.match(str(exc))
        where, line, detail = (m.group(1), int(m.group(2)), m.group(3)) if m else (path, tok.where()[1], str(exc))
        if detail in _VAGUE:
            detail = f"cannot parse {_line_text(where, line, path, text)!r}"
        raise ZoneFileError(where, line, detail) from None
    except (dns.exception.DNSException, KeyError, ValueError, OSError) as exc:
        where, line = (reader.tok if reader is not None else tok).where()
        raise ZoneFileError(str(where), line, _reason(exc, zone)) from None
    origin_text = zone.origin.to_text().lower()
    if zone.get_rdataset(zone.origin, dns.rdatatype.SOA) is None:
        raise ZoneFileError(path, 1, f"no SOA record at the zone origin {origin_text}")
    records = tuple(ZoneRecord(name.to_text().lower(), int(rdata.rdtype), ttl, rdata.to_wire())
                    for name, ttl, rdata in zone.iterate_rdatas())
    return Zone(origin=origin_text, records=records, source=source)


_VAGUE = {"Text input is malformed.", "syntax error", ""}


def _line_text(where: str, line: int, path: str, text: str) -> str:
    """The offending line as written, for an error dnspython does not describe."""
    try:
        lines = (text if where == path else Path(where).read_text(encoding="utf-8")).splitlines()
    except (OSError, UnicodeDecodeError):
        return "the record"
    return lines[line - 1].strip() if 0 < line <= len(lines) else "the record"


def _starts_with_origin(text: str) -> bool:
    """Whether an $ORIGIN comes before the first record (then it, not the file name, is the zone's origin)."""
    for line in text.splitlines():
        words = line.split(";", 1)[0].split()
        if not words:
            continue
        if words[0].upper() == "$ORIGIN":
            return True
        if not words[0].startswith("$"):
            return False
    return False


def _reason(exc: BaseException, zone: dns.zone.Zone) -> str:
    if isinstance(exc, KeyError) and zone.origin is not None:
        return f"a name outside the zone {zone.origin.to_text().lower()}"
    if isinstance(exc, OSError):
        return f"cannot read {exc.filename}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__
