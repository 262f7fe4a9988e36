"""Upstream DNS messages without I/O: build a query, validate a reply, render it for a client.

A reply is only believed when it is a response to exactly what we asked: same
16-bit ID and same question (name compared case-insensitively, type and class
exactly). Anything else (a late reply to an older query, a spoofing attempt,
garbage) is ignored and the exchange keeps waiting. Parsing where each TTL
lives lets a cached reply be served later with TTLs decremented by its age,
the client's ID and the client's question casing, without building DNS objects.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Sequence

from ..dns import wire
from ..dns.wire import AA, AD, HEADER, NOERROR, NXDOMAIN, OPT, QR, RD, RR_FIXED, SOA, TC, Query, WireError

_TTL = struct.Struct("!I")
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, str(rcode))


@dataclass(frozen=True, slots=True)
class Reply:
    """A validated upstream reply: its records (up to its OPT) and where their TTLs are."""

    data: bytes
    rcode: int                     # with the OPT's extended bits
    flags: int
    counts: tuple[int, int, int]   # answer, authority, additional records kept
    start: int                     # where the records start
    end: int                       # where the records kept end (an OPT, and anything after it, is left out)
    ttl_offsets: tuple[int, ...]   # byte offset of the TTL field of every record kept
    ttls: tuple[int, ...]          # their values as received
    options: bytes                 # the OPT's options, passed on with ours
    negative_ttl: int | None       # min(SOA TTL, SOA MINIMUM) of an SOA in authority (RFC 2308)

    @property
    def tc(self) -> bool:
        return bool(self.flags & TC)

    @property
    def ancount(self) -> int:
        return self.counts[0]

    @property
    def min_ttl(self) -> int | None:
        return min(self.ttls) if self.ttls else None

    @property
    def negative(self) -> bool:
        """NXDOMAIN, or NOERROR with no answer (NODATA)."""
        return self.rcode == NXDOMAIN or (self.rcode == NOERROR and self.counts[0] == 0)


def lower_question(question: bytes) -> bytes:
    """The question with its name lower-cased (ASCII letters only; label lengths are < 64)."""
    return question[:-4].lower() + question[-4:]


def build_query(question: bytes, *, qid: int, do: bool, payload: int = 1232) -> bytes:
    """A recursive query for one question, with EDNS (our payload size; DO as the client asked)."""
    header = HEADER.pack(qid, RD, 1, 0, 0, 1)
    opt = b"\x00" + RR_FIXED.pack(OPT, payload, 0x8000 if do else 0, 0)
    return header + question + opt


def parse_reply(data: bytes, *, qid: int, question: bytes) -> Reply | None:
    """The reply if it answers (qid, question), else None (to be ignored)."""
    if len(data) < 12 + len(question):
        return None
    rid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
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
    start = pos
    offsets: list[int] = []
    ttls: list[int] = []
    negative_ttl = None
    end, kept, rcode, options = -1, ancount + nscount + arcount, flags & 0xF, b""
    for index in range(ancount + nscount + arcount):
        record_start = pos
        _, rtype, _, ttl, rdata_start, pos = wire.read_record(data, pos)
        if rtype == OPT and index >= ancount + nscount:
            if end < 0:   # records after an OPT are additional data a client can do without
                end, kept = record_start, index
                rcode |= (ttl >> 24) << 4
                options = data[rdata_start:pos]
            continue
        if end >= 0:
            continue
        if ttl & 0x80000000:  # RFC 2181 §8: a TTL with the top bit set means 0
            ttl = 0
        offsets.append(rdata_start - 6)
        ttls.append(ttl)
        if rtype == SOA and ancount <= index < ancount + nscount and pos - rdata_start >= 20:
            minimum = int.from_bytes(data[pos - 4:pos], "big")
            value = min(ttl, minimum)
            negative_ttl = value if negative_ttl is None else min(negative_ttl, value)
    counts = (ancount, nscount, kept - ancount - nscount)
    return Reply(data=data, rcode=rcode, flags=flags, counts=counts, start=start, end=pos if end < 0 else end,
                 ttl_offsets=tuple(offsets), ttls=tuple(ttls), options=options, negative_ttl=negative_ttl)


def render(reply: Reply, query: Query, ttls: Sequence[int], *, our_payload: int, limit: int) -> bytes:
    """The reply as this client must see it: its ID, its question as asked, its RD/CD, RA set, these
    TTLs, our OPT if it sent one. Too big for `limit`: header and question with TC."""
    body = bytearray(reply.data[reply.start:reply.end])
    for offset, value in zip(reply.ttl_offsets, ttls):
        _TTL.pack_into(body, offset - reply.start, max(0, value))
    an, ns, ar = reply.counts
    tc = False
    options = reply.options if query.edns is not None else b""
    if len(body) + len(options) > wire.room(query, limit):
        body, an, ns, ar, tc = b"", 0, 0, 0, True
    return wire.reply(query, reply.rcode, bytes(body), an, ns, ar, our_payload=our_payload,
                      aa=bool(reply.flags & AA), ra=True, tc=tc, ad=bool(reply.flags & AD),
                      options=options)
