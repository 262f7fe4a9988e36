"""Wire-form rdata for the record types meshdns synthesizes (uncompressed names)."""
from __future__ import annotations

import ipaddress
import struct

from .wire import A, AAAA, ANY, CNAME, HINFO, NS, OPT, PTR, RR_FIXED, SOA, SRV, TXT  # noqa: F401 (re-exported)


def name(text: str) -> bytes:
    """An FQDN (with or without trailing dot) in uncompressed wire form."""
    text = text.rstrip(".")
    if not text:
        return b"\x00"
    out = bytearray()
    for label in text.split("."):
        raw = label.encode("ascii", "strict")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {text!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {text!r}")
    return bytes(out)


def a(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def aaaa(ip: str) -> bytes:
    return ipaddress.IPv6Address(ip).packed


def srv(priority: int, weight: int, port: int, target: str) -> bytes:
    return struct.pack("!HHH", priority, weight, port) + name(target)


def txt(*strings: str) -> bytes:
    out = bytearray()
    for s in strings:
        raw = s.encode("utf-8")
        for i in range(0, max(len(raw), 1), 255):
            chunk = raw[i:i + 255]
            out.append(len(chunk))
            out += chunk
    return bytes(out)


def soa(mname: str, rname: str, serial: int, refresh: int, retry: int, expire: int, minimum: int) -> bytes:
    return name(mname) + name(rname) + struct.pack("!IIIII", serial & 0xFFFFFFFF, refresh, retry, expire, minimum)


def record(owner: str | None, rtype: int, ttl: int, value: bytes) -> bytes:
    """One resource record; owner None is the question name (a pointer to it)."""
    return (b"\xc0\x0c" if owner is None else name(owner)) + RR_FIXED.pack(rtype, 1, max(0, ttl), len(value)) + value
