"""qname -> Lookup: what a name inside our domains asks for. Pure string work."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .wire import own_domain  # noqa: F401  (kept in wire.py, which the forwarder shares)

KINDS = ("service", "node", "addr", "query")


@dataclass(frozen=True, slots=True)
class ServiceLookup:
    service: str
    tag: str
    datacenter: str | None
    domain: str
    srv_only: bool = False  # an RFC 2782 name without `.service`: Consul answers it for SRV only


@dataclass(frozen=True, slots=True)
class NodeLookup:
    node: str
    datacenter: str | None
    domain: str


@dataclass(frozen=True, slots=True)
class AddrLookup:
    ip: str | None      # None: not a valid encoding -> NXDOMAIN
    datacenter: str | None
    domain: str


@dataclass(frozen=True, slots=True)
class QueryLookup:
    """`<name or ID>.query[.<dc>].<domain>`: run a prepared query."""

    name: str
    datacenter: str | None
    domain: str


@dataclass(frozen=True, slots=True)
class ApexLookup:
    """The domain itself, or `ns.<domain>`."""

    domain: str
    ns: bool = False


@dataclass(frozen=True, slots=True)
class UnknownLookup:
    """Inside our domain but no name form matches: NXDOMAIN."""

    domain: str


@dataclass(frozen=True, slots=True)
class ReverseLookup:
    ip: str | None      # None: a partial or malformed reverse name


Lookup = ServiceLookup | NodeLookup | AddrLookup | QueryLookup | ApexLookup | UnknownLookup | ReverseLookup


def parse_own(qname: str, domain: str) -> Lookup:
    """Parse a lower-case FQDN known to be inside `domain`."""
    if qname == domain:
        return ApexLookup(domain)
    labels = qname[: -len(domain) - 1].split(".")
    if labels == ["ns"]:
        return ApexLookup(domain, ns=True)
    dc: str | None = None
    if labels[-1] in KINDS and len(labels) >= 2:
        kind, head = labels[-1], labels[:-1]
    elif len(labels) >= 3 and labels[-2] in KINDS:
        kind, head, dc = labels[-2], labels[:-2], labels[-1]
    else:
        return _bare_rfc2782(labels, domain)
    if kind == "service":
        return _service(head, dc, domain)
    if kind == "node":
        return NodeLookup(".".join(head), dc, domain)
    if kind == "query":
        return QueryLookup(".".join(head), dc, domain)
    if len(head) != 1:
        return AddrLookup(None, dc, domain)
    return AddrLookup(decode_addr(head[0]), dc, domain)


def _service(head: list[str], dc: str | None, domain: str, *, srv_only: bool = False) -> Lookup:
    if len(head) == 1:
        if head[0].startswith("_"):
            return UnknownLookup(domain)
        return ServiceLookup(head[0], "", dc, domain)
    first, second = head[0], head[-1]
    if len(head) == 2 and first.startswith("_") and second.startswith("_"):  # RFC 2782 _svc._proto / _svc._tag
        tag = second[1:]
        return ServiceLookup(first[1:], "" if tag in ("tcp", "udp") else tag, dc, domain, srv_only)
    return ServiceLookup(second, ".".join(head[:-1]), dc, domain)  # a tag may hold dots, as in Consul


def _bare_rfc2782(labels: list[str], domain: str) -> Lookup:
    """`_svc._tag[.dc].consul`: Consul reads an SRV name without `.service` from its last `_` label."""
    if labels[-1].startswith("_"):
        head, dc = labels, None
    elif len(labels) >= 2 and labels[-2].startswith("_"):
        head, dc = labels[:-1], labels[-1]
    else:
        return UnknownLookup(domain)
    if len(head) != 2 or not head[0].startswith("_"):
        return UnknownLookup(domain)
    return _service(head, dc, domain, srv_only=True)


def decode_addr(label: str) -> str | None:
    try:
        raw = bytes.fromhex(label)
    except ValueError:
        return None
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    return None


def encode_addr(ip: str) -> str:
    return ipaddress.ip_address(ip).packed.hex()


def parse_reverse(qname: str) -> ReverseLookup | None:
    """in-addr.arpa / ip6.arpa names -> the IP; None when qname is not a reverse name."""
    if qname.endswith(".in-addr.arpa."):
        parts = qname[: -len(".in-addr.arpa.")].split(".")
        if len(parts) != 4 or not all(p.isascii() and p.isdigit() and int(p) < 256 and str(int(p)) == p for p in parts):
            return ReverseLookup(None)
        return ReverseLookup(".".join(reversed(parts)))
    if qname.endswith(".ip6.arpa."):
        parts = qname[: -len(".ip6.arpa.")].split(".")
        if len(parts) != 32 or not all(len(p) == 1 and p in "0123456789abcdef" for p in parts):
            return ReverseLookup(None)
        hexstr = "".join(reversed(parts))
        return ReverseLookup(str(ipaddress.IPv6Address(bytes.fromhex(hexstr))))
    return None


def ip_version(text: str) -> int:
    """4, 6, or 0 for a hostname."""
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0
