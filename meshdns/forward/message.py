"""Upstream DNS messages without I/O: build a query, validate a reply, render it for a client.

A reply is only believed when it is a response to exactly what we asked: same
16-bit ID and same question (name compared case-insensitively, type and class
exactly). Anything else (a late reply to an older query, a spoofing attempt,
garbage) is ignored and the exchange keeps waiting. Parsing records where
each TTL lives lets a cached reply be served later with TTLs decremented by
its age, the client's ID and the client's question casing, without building
DNS objects.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from ..dns import rdata
from ..dns.resolver import NOERROR, NXDOMAIN
from ..dns.wire import CD, QR, RA, RD, TC, WireError, Query, read_name

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_TTL = struct.Struct("!I")
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, str(rcode))


@dataclass(frozen=True, slots=True)
class Reply:
    """A validated upstream reply and where its TTLs are."""

    data: bytes
    rcode: int
    tc: bool
    ancount: int
    ttl_offsets: tuple[int, ...]   # byte offset of every TTL field except the OPT's
    ttls: tuple[int, ...]          # their values as received
    opt_offset: int                # start of the OPT record, -1 when there is none
    opt_last: bool                 # the OPT is the last record (it can be cut off)
    negative_ttl: int | None       # min(SOA TTL, SOA MINIMUM) of an SOA in authority (RFC 2308)

    @property
    def min_ttl(self) -> int | None:
        return min(self.ttls) if self.ttls else None

    @property
    def negative(self) -> bool:
        """NXDOMAIN, or NOERROR with no answer (NODATA)."""
        return self.rcode == NXDOMAIN or (self.rcode == NOERROR and self.ancount == 0)


def lower_question(question: bytes) -> bytes:
    """The question with its name lower-cased (ASCII letters only; label lengths are < 64)."""
    return question[:-4].lower() + question[-4:]


def build_query(question: bytes, *, qid: int, do: bool, payload: int = 1232) -> bytes:
    """A recursive query for one question, with EDNS (our payload size; DO as the client asked)."""
    header = _HEADER.pack(qid, RD, 1, 0, 0, 1)
    opt = b"\x00" + _RR_FIXED.pack(rdata.OPT, payload, 0x8000 if do else 0, 0)
    return header + question + opt


def parse_reply(data: bytes, *, qid: int, question: bytes) -> Reply | None:
    """The reply if it answers (qid, question), else None (to be ignored)."""
    if len(data) < 12 + len(question):
        return None
    rid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if rid != qid or not flags & QR or (flags >> 11) & 0xF != 0 or qdcount != 1:
        return None
    end = 12 + len(question)
    got = data[12:end]
    if got[:-4].lower() != question[:-4].lower() or got[-4:] != question[-4:]:
        return None
    try:
        return _records(data, end, flags, ancount, nscount, arcount)
    except (WireError, struct.error):
        return None


def _records(data: bytes, pos: int, flags: int, ancount: int, nscount: int, arcount: int) -> Reply:
    offsets: list[int] = []
    ttls: list[int] = []
    opt_offset, opt_last, negative_ttl = -1, False, None
    total = ancount + nscount + arcount
    for index in range(total):
        start = pos
        _, pos = read_name(data, pos, allow_pointers=True)
        if pos + 10 > len(data):
            raise WireError(None, "truncated record")
        rtype, _, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
        rdata_start = pos + 10
        pos = rdata_start + rdlen
        if pos > len(data):
            raise WireError(None, "rdata past the end")
        if rtype == rdata.OPT and index >= ancount + nscount:
            opt_offset, opt_last = start, index == total - 1
            continue
        if ttl & 0x80000000:  # RFC 2181 §8: a TTL with the top bit set means 0
            ttl = 0
        offsets.append(rdata_start - 6)
        ttls.append(ttl)
        if rtype == rdata.SOA and ancount <= index < ancount + nscount and rdlen >= 20:
            minimum = int.from_bytes(data[pos - 4:pos], "big")
            value = min(ttl, minimum)
            negative_ttl = value if negative_ttl is None else min(negative_ttl, value)
    return Reply(data=data, rcode=flags & 0xF, tc=bool(flags & TC), ancount=ancount,
                 ttl_offsets=tuple(offsets), ttls=tuple(ttls), opt_offset=opt_offset,
                 opt_last=opt_last, negative_ttl=negative_ttl)


def render(reply: Reply, query: Query, *, ttl: Callable[[int], int], our_payload: int) -> bytes:
    """The reply as this client must see it: its ID, its question casing, its RD/CD, RA set,
    every TTL mapped through `ttl`, and an OPT only if the client sent one."""
    buf = bytearray(reply.data)
    flags = int.from_bytes(buf[2:4], "big")
    flags = (flags & ~(RD | CD)) | (query.flags & (RD | CD)) | RA
    struct.pack_into("!HH", buf, 0, query.id, flags)
    q = query.question
    buf[12:12 + len(q)] = q
    for offset, value in zip(reply.ttl_offsets, reply.ttls):
        _TTL.pack_into(buf, offset, max(0, ttl(value)))
    if reply.opt_offset >= 0:
        if query.edns is None:
            if reply.opt_last:
                del buf[reply.opt_offset:]
                arcount = int.from_bytes(buf[10:12], "big") - 1
                buf[10:12] = arcount.to_bytes(2, "big")
        else:
            struct.pack_into("!H", buf, reply.opt_offset + 3, our_payload)
    return bytes(buf)


def answer_records(reply: Reply, *, types: frozenset[int], ttl: Callable[[int], int]) -> list[tuple[str, int, int, bytes]]:
    """(owner, type, ttl, rdata) of the answer records of these types, names decompressed
    so they can be copied into another message."""
    data = reply.data
    out = []
    _, pos = read_name(data, 12, allow_pointers=False)
    pos += 4
    for _ in range(reply.ancount):
        owner, pos = read_name(data, pos, allow_pointers=True)
        rtype, _, raw_ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
        start = pos + 10
        pos = start + rdlen
        if rtype not in types:
            continue
        if raw_ttl & 0x80000000:
            raw_ttl = 0
        try:
            rdata.name(owner)  # only names meshdns can encode again (no escaped or 8-bit labels)
            value = rdata.name(read_name(data, start, allow_pointers=True)[0]) if rtype == rdata.CNAME \
                else data[start:pos]
        except (ValueError, UnicodeEncodeError):
            continue
        out.append((owner, rtype, max(0, ttl(raw_ttl)), value))
    return out
