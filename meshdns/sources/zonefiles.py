"""Parsers for the files in zones/: TOML catalogs and RFC 1035 master files.

Bytes in, values out; every error names the file and line so an operator can
fix it while the previous content keeps being served.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from dnslib import RR, DNSBuffer

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
# RFC 1035 master files


class _NoCompression(dict):
    """A DNSBuffer name table that never remembers, so rdata stays self-contained."""

    def __setitem__(self, key, value) -> None:
        pass


def rdata_wire(rr: RR) -> bytes:
    buf = DNSBuffer()
    buf.names = _NoCompression()
    rr.rdata.pack(buf)
    return bytes(buf.data)


def _logical_records(text: str):
    """Yield (line number, text, starts_with_blank) for each record, joining ( ... ) spans."""
    pending, start, depth, blank = [], 0, 0, False
    for n, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        if depth == 0:
            if not line.strip():
                continue
            start, blank, pending = n, line[:1].isspace(), []
        depth += line.count("(") - line.count(")")
        pending.append(line.replace("(", " ").replace(")", " "))
        if depth < 0:
            raise ZoneFileError("", n, "unbalanced ')'")
        if depth == 0:
            yield start, " ".join(pending), blank
    if depth:
        raise ZoneFileError("", start, "unbalanced '(' (record never closed)")


def _strip_comment(line: str) -> str:
    out, quoted = [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            break
        out.append(ch)
    return "".join(out)


_CLASSES = {"IN", "CH", "HS", "CS"}


def parse_master(path: str, text: str, *, default_origin: str, source: str) -> Zone:
    origin = default_origin.lower()
    zone_origin = None
    ttl = 3600
    owner = None
    records: list[ZoneRecord] = []
    try:
        for line, rec, blank in _logical_records(text):
            words = rec.split()
            if words[0].upper() == "$ORIGIN":
                if len(words) != 2:
                    raise ZoneFileError(path, line, "$ORIGIN takes one name")
                origin = _absolute(words[1], origin)
                continue
            if words[0].upper() == "$TTL":
                try:
                    ttl = int(parse_duration(words[1] if len(words) > 1 else "", key="$TTL"))
                except ConfigError:
                    raise ZoneFileError(path, line, f"bad $TTL {words[1:]!r}") from None
                continue
            if words[0].startswith("$"):
                raise ZoneFileError(path, line, f"unsupported directive {words[0]}")
            if zone_origin is None:
                zone_origin = origin
            if blank:
                if owner is None:
                    raise ZoneFileError(path, line, "record without an owner name")
                rec = f"{owner} {rec.strip()}"
            else:
                owner = _absolute(words[0], origin)
                rec = f"{owner} {' '.join(words[1:])}"
            try:
                parsed = RR.fromZone(rec, origin=origin, ttl=ttl)
            except Exception as exc:  # dnslib raises many types for bad rdata
                raise ZoneFileError(path, line, f"cannot parse record: {exc or type(exc).__name__}") from None
            if not parsed:
                raise ZoneFileError(path, line, "cannot parse record")
            for rr in parsed:
                name = str(rr.rname).lower()
                if not (name == zone_origin or name.endswith("." + zone_origin)):
                    raise ZoneFileError(path, line, f"{name} is outside the zone {zone_origin}")
                records.append(ZoneRecord(name, rr.rtype, rr.ttl, rdata_wire(rr)))
    except ZoneFileError as exc:
        if not exc.path:
            raise ZoneFileError(path, exc.line, exc.message) from None
        raise
    zone_origin = zone_origin or origin
    if not any(r.rtype == 6 and r.name == zone_origin for r in records):
        raise ZoneFileError(path, 1, f"no SOA record at the zone origin {zone_origin}")
    return Zone(origin=zone_origin, records=tuple(records), source=source)


def _absolute(name: str, origin: str) -> str:
    if name == "@":
        return origin
    if name.endswith("."):
        return name.lower()
    return f"{name}.{origin}".lower() if origin != "." else f"{name}.".lower()

