"""Field checks shared by every way a service enters the catalog (zone files, API, Kubernetes).

Each check raises FieldError naming the field, so a zone file can report
file:line and the API can answer 400 with the same words.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Mapping

from .model import Intention, IntentionSource, Split, SplitTarget, Weights

_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
_HOST = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                   r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?")


class FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


LABEL_RULE = ("one DNS label: letters, digits, '-' and '_', starting and ending with a letter or digit, "
              "at most 63 characters")


def dns_label(value: Any, field: str) -> str:
    """A datacenter name (or any name that must be one DNS label)."""
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise FieldError(field, f"{value!r} is not a valid name ({LABEL_RULE})")
    return value


def service_name(value: Any, field: str) -> str:
    """The one rule for a service name, wherever it comes from (API, zone file, Kubernetes, a split, a URL):
    it is the first label of `<name>.service.consul`, so it is one DNS label."""
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise FieldError(field, f"{value!r} is not a valid service name ({LABEL_RULE})")
    return value


def node_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _HOST.fullmatch(value) or value.endswith("."):
        raise FieldError(field, f"{value!r} is not a valid node name")
    return value


def ip_address(value: Any, field: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except (ValueError, TypeError):
        raise FieldError(field, f"{value!r} is not an IP address") from None


def source_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's address as the catalog writes addresses: no zone index, IPv4-mapped IPv6 as IPv4; None
    when it is no IP. The one rule for every place that matches a source against the catalog or a CIDR."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_ip(text: str) -> str:
    """The address a client connects from, as a registration stores it ("" when it is no IP). The server
    (peer address) and `meshdns register` (local address) both use this, so the ID the client prints is
    the one the server stores."""
    ip = source_address(text)
    return "" if ip is None else str(ip)


def address(value: Any, field: str) -> str:
    """An IP address or a hostname (hostname instances are answered with a CNAME)."""
    if value in ("", None):
        return ""
    if not isinstance(value, str):
        raise FieldError(field, f"{value!r} is not an address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOST.fullmatch(value) or value.replace(".", "").isdigit():
        raise FieldError(field, f"{value!r} is neither an IP address nor a hostname")
    return value.lower()


def service_address(value: Any, field: str) -> str:
    """A service's address: as `address`, but never 0.0.0.0 or :: (every address is no address to connect to)."""
    text = address(value, field)
    if text in ("0.0.0.0", "::"):
        raise FieldError(field, f"{value!r} is not a service address (it means every address: give the one "
                                f"clients connect to, or none to use the node's)")
    return text


def boolean(value: Any, field: str) -> bool:
    """A JSON true/false; absent (None) is false."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise FieldError(field, f"{value!r} is not true or false")
    return value


def port(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise FieldError(field, f"{value!r} is not a port (0-65535)")
    return value


def tags(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise FieldError(field, "expected a list of non-empty strings")
    return tuple(value)


def meta(value: Any, field: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise FieldError(field, "expected an object of string values")
    out = []
    for k, v in value.items():
        if not isinstance(k, str) or not k or len(k) > 128:
            raise FieldError(field, f"bad key {k!r}")
        if not isinstance(v, str):
            raise FieldError(f"{field}.{k}", "expected a string")
        out.append((k, v))
    return tuple(sorted(out))


def weights(value: Any, field: str) -> Weights:
    if value is None:
        return Weights()
    if not isinstance(value, Mapping):
        raise FieldError(field, "expected {passing = N, warning = N}")
    lower = {str(k).lower(): v for k, v in value.items()}
    unknown = set(lower) - {"passing", "warning"}
    if unknown:
        raise FieldError(f"{field}.{sorted(unknown)[0]}", "unknown key")
    out = {}
    for key in ("passing", "warning"):
        v = lower.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
            raise FieldError(f"{field}.{key}", f"{v!r} is not a weight (0-65535)")
        out[key] = v
    if out["passing"] < 1:
        raise FieldError(f"{field}.passing", "must be at least 1")
    return Weights(**out)


def split(name: Any, targets: Any, *, field: str, ttl: float | None = None,
          on_all_unhealthy: str = "nxdomain", source: str = "", revision: int = 0,
          percent: bool = False, local_datacenter: str = "") -> Split:
    """Validate a split. `percent`: weights are percentages that must sum to 100 (service-splitter).

    A target's `datacenter` naming `local_datacenter` is the same as none: a target is local or a peer's."""
    name = service_name(name, f"{field}.name").lower()
    if not isinstance(targets, list) or not targets:
        raise FieldError(f"{field}.targets", "expected a non-empty list of targets")
    out = []
    for i, t in enumerate(targets):
        f = f"{field}.targets[{i}]"
        if not isinstance(t, Mapping):
            raise FieldError(f, "expected {service = ..., weight = ...}")
        service = service_name(t.get("service"), f"{f}.service").lower()
        weight = t.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise FieldError(f"{f}.weight", f"{weight!r} is not a non-negative number")
        if percent and (weight > 100 or round(weight * 100) != weight * 100):
            raise FieldError(f"{f}.weight", f"{weight!r} must be 0-100 with at most 0.01 resolution")
        tag = t.get("tag", "") or ""
        if not isinstance(tag, str):
            raise FieldError(f"{f}.tag", "expected a string")
        dc = t.get("datacenter", "") or ""
        dc = dns_label(dc, f"{f}.datacenter").lower() if dc else ""
        if dc == local_datacenter.lower():
            dc = ""
        if service == name and not tag and not dc:
            raise FieldError(f"{f}.service", "a split may not target itself without a tag or another datacenter")
        out.append(SplitTarget(service=service, weight=float(weight), tag=tag.lower(), datacenter=dc))
    total = sum(t.weight for t in out)
    if total <= 0:
        raise FieldError(f"{field}.targets", "at least one target needs a positive weight")
    if percent and abs(total - 100.0) > 1e-6:
        raise FieldError(f"{field}.targets", f"weights sum to {total:g}, not 100")
    if on_all_unhealthy not in ("nxdomain", "all"):
        raise FieldError(f"{field}.on_all_unhealthy", f"{on_all_unhealthy!r} is not nxdomain or all")
    return Split(name=name, targets=tuple(out), ttl=ttl, on_all_unhealthy=on_all_unhealthy,
                 source=source, revision=revision)


def split_loops(splits: Mapping[str, Split]) -> str | None:
    """A message when a split targets another split (we do not chain them), else None."""
    for s in splits.values():
        for t in s.targets:
            # a split answers only for our datacenter: a peer's copy of a name is never a split here
            if t.service in splits and not (t.service == s.name and t.tag) and not t.datacenter:
                return f"split {s.name!r} targets {t.service!r}, which is itself a split"
    return None


ACTIONS = ("allow", "deny")


def action(value: Any, field: str) -> str:
    """An intention's action: "allow" or "deny" (any case)."""
    if not isinstance(value, str) or value.lower() not in ACTIONS:
        raise FieldError(field, f"{value!r} is not allow or deny")
    return value.lower()


def intention(name: Any, sources: Any, *, field: str, source: str = "", revision: int = 0) -> Intention:
    """Validate a service-intentions entry: `sources` is a list of {name, action}; a source name is a
    service or "*", and appears once (the most specific source wins, so order carries no meaning)."""
    name = service_name(name, f"{field}.name").lower()
    if not isinstance(sources, list):
        raise FieldError(f"{field}.sources", "expected a list of {name, action}")
    out: list[IntentionSource] = []
    for i, raw in enumerate(sources):
        f = f"{field}.sources[{i}]"
        if not isinstance(raw, Mapping):
            raise FieldError(f, "expected {name = ..., action = ...}")
        src = raw.get("name")
        src = "*" if src == "*" else service_name(src, f"{f}.name").lower()
        if any(s.name == src for s in out):
            raise FieldError(f"{f}.name", f"{src!r} is listed twice")
        out.append(IntentionSource(name=src, action=action(raw.get("action"), f"{f}.action")))
    return Intention(name=name, sources=tuple(out), source=source, revision=revision)


_ID_BAD = re.compile(r"[/\\?#%\x00-\x1f\x7f\x85\u2028\u2029]")


def identifier(value: Any, field: str) -> str:
    """A service or check ID: it travels in URL paths (/deregister/:id), so no '/', '?', '#', '%' or control
    characters. Spaces are fine (a check named "Memory usage" has that ID, as in Consul; clients encode them)."""
    if not isinstance(value, str) or not value or len(value) > 256 or _ID_BAD.search(value):
        raise FieldError(field, f"{value!r} is not a valid ID (1-256 characters, no '/', '?', '#', '%' or "
                                f"control characters)")
    return value


def known_keys(value: Mapping, allowed: Any, field: str) -> None:
    """Reject a key that is not in `allowed` (compared as Consul does: any case, '_' ignored)."""
    norm = {a.lower().replace("_", "") for a in allowed}
    for key in value:
        if str(key).lower().replace("_", "") not in norm:
            raise FieldError(f"{field}.{key}" if field else str(key), "unknown field")
