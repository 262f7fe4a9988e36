"""DNS wire format: bytes -> Query, (Query, Answer) -> bytes. No I/O.

Queries are parsed by hand (header, one question, the OPT record) because that
is all a resolver needs and dnslib's object model costs more than the answer.
Any problem the client caused raises WireError carrying the rcode to send.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from . import rdata
from .resolver import FORMERR, NOTIMP, REFUSED, Answer, Record

BADVERS = 16
QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
MAX_TCP = 65535
_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")


class WireError(Exception):
    """A query we must answer with an error rcode (None: drop it silently)."""

    def __init__(self, rcode: int | None, message: str, query: "Query | None" = None):
        super().__init__(message)
        self.rcode = rcode
        self.query = query


@dataclass(frozen=True, slots=True)
class Edns:
    payload: int
    version: int
    do: bool


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    qname: str            # as asked, for logs and the forwarder
    qname_lower: str      # lower-case FQDN, for lookups
    qtype: int
    qclass: int
    question: bytes       # the question section exactly as received (echoed back)
    edns: Edns | None = None

    @property
    def rd(self) -> bool:
        return bool(self.flags & RD)


def read_name(data: bytes, pos: int, *, allow_pointers: bool) -> tuple[str, int]:
    """A domain name at pos -> (text, position after it). Loops and overruns raise."""
    labels: list[str] = []
    end = -1
    total = 1
    jumps = 0
    n = len(data)
    while True:
        if pos >= n:
            raise WireError(FORMERR, "name runs past the end of the packet")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if not allow_pointers:
                raise WireError(FORMERR, "compression pointer in the question")
            if pos + 1 >= n:
                raise WireError(FORMERR, "truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end < 0:
                end = pos + 2
            jumps += 1
            if jumps > 64 or target >= pos:
                raise WireError(FORMERR, "compression loop or bad pointer")
            pos = target
            continue
        if length & 0xC0:
            raise WireError(FORMERR, "unsupported label type")
        total += length + 1
        if total > 255:
            raise WireError(FORMERR, "name longer than 255 octets")
        if pos + 1 + length > n:
            raise WireError(FORMERR, "label runs past the end of the packet")
        label = data[pos + 1:pos + 1 + length].decode("latin-1")
        if "." in label or "\\" in label:
            label = label.replace("\\", "\\\\").replace(".", "\\.")
        labels.append(label)
        pos += 1 + length
    return (".".join(labels) + "." if labels else "."), (end if end >= 0 else pos)


def _skip_rr(data: bytes, pos: int) -> tuple[int, int, int, int, int]:
    """-> (type, class, ttl, rdata_start, next_pos)"""
    _, pos = read_name(data, pos, allow_pointers=True)
    if pos + 10 > len(data):
        raise WireError(FORMERR, "truncated resource record")
    rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
    start = pos + 10
    if start + rdlen > len(data):
        raise WireError(FORMERR, "rdata runs past the end of the packet")
    return rtype, rclass, ttl, start, start + rdlen


def parse_query(data: bytes) -> Query:
    if len(data) < 12:
        raise WireError(None, "shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & QR:
        raise WireError(None, "a response, not a query")  # never answer answers (reflection loops)
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        raise WireError(NOTIMP, f"opcode {opcode} not implemented", _bare(qid, flags))
    if qdcount != 1:
        raise WireError(FORMERR, f"{qdcount} questions (exactly one is supported)", _bare(qid, flags))
    try:
        qname, pos = read_name(data, 12, allow_pointers=False)
        if pos + 4 > len(data):
            raise WireError(FORMERR, "truncated question")
        qtype, qclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        question = data[12:pos]
        edns = None
        for index in range(ancount + nscount + arcount):
            rtype, rclass, ttl, _, pos = _skip_rr(data, pos)
            if index >= ancount + nscount and rtype == rdata.OPT:
                if edns is not None:
                    raise WireError(FORMERR, "more than one OPT record")
                edns = Edns(payload=max(512, rclass), version=(ttl >> 16) & 0xFF, do=bool(ttl & 0x8000))
    except WireError as exc:
        exc.query = exc.query or _bare(qid, flags)
        raise
    query = Query(qid, flags, qname, qname.lower(), qtype, qclass, question, edns)
    if edns is not None and edns.version > 0:
        raise WireError(BADVERS, f"EDNS version {edns.version}", query)
    if qclass not in (1, 255):
        raise WireError(REFUSED, f"class {qclass} not served", query)
    return query


def _bare(qid: int, flags: int) -> Query:
    """Enough of a query to address an error reply (no question echoed)."""
    return Query(qid, flags, "", "", 0, 0, b"", None)


# ---------------------------------------------------------------------------
# encoding


def encode_name(name: str) -> bytes:
    return rdata.name(name)


def encode_record(rec: Record) -> bytes:
    owner = b"\xc0\x0c" if rec.name is None else encode_name(rec.name)
    return owner + _RR_FIXED.pack(rec.rtype, 1, max(0, rec.ttl), len(rec.rdata)) + rec.rdata


def _opt(payload: int, rcode: int, do: bool) -> bytes:
    ttl = ((rcode >> 4) << 24) | (0x8000 if do else 0)
    return b"\x00" + _RR_FIXED.pack(rdata.OPT, payload, ttl, 0)


def response_limit(query: Query, *, tcp: bool, our_payload: int) -> int:
    if tcp:
        return MAX_TCP
    if query.edns is None:
        return 512
    return max(512, min(query.edns.payload, our_payload))


def encode_response(query: Query, answer: Answer, *, limit: int, our_payload: int = 1232,
                    recursion_available: bool = False, set_tc: bool = True) -> bytes:
    """Assemble the reply; trim whole records to `limit` bytes, setting TC if answers were cut."""
    rcode = answer.rcode
    sections = ([encode_record(r) for r in answer.answer],
                [encode_record(r) for r in answer.authority],
                [encode_record(r) for r in answer.additional])
    return assemble(query, rcode, sections, limit=limit, our_payload=our_payload,
                    aa=answer.authoritative, ra=recursion_available, set_tc=set_tc, units=answer.units)


def assemble(query: Query, rcode: int, sections, *, limit: int, our_payload: int, aa: bool,
             ra: bool, set_tc: bool, units=()) -> bytes:
    """units: (answer, additional) record counts per unit after any leading answer records (see
    Answer.units); an answer with additional records is trimmed to whole units."""
    an, ns, ar = sections
    opt = _opt(our_payload, rcode, query.edns.do) if query.edns is not None else b""
    room = limit - 12 - len(query.question) - len(opt)
    tc = False
    out_an, out_ns, out_ar = an, ns, ar
    size = sum(map(len, an)) + sum(map(len, ns)) + sum(map(len, ar))
    if size > room:
        fitted = _fit_units(an, ns, ar, units, room) if units and ar else None
        if fitted is not None:
            out_an, out_ar = fitted
        else:
            out_an, room = _fit(an, room)
            out_ns, room = _fit(ns, room) if len(out_an) == len(an) else ([], room)
            out_ar, room = _fit(ar, room) if len(out_ns) == len(ns) else ([], room)
        tc = set_tc and (len(out_an) < len(an) or len(out_ns) < len(ns))
    flags = QR | (query.flags & (0x7800 | RD | CD)) | (rcode & 0xF)
    if aa:
        flags |= AA
    if ra:
        flags |= RA
    if tc:
        flags |= TC
    qd = 1 if query.question else 0
    header = _HEADER.pack(query.id, flags, qd, len(out_an), len(out_ns), len(out_ar) + (1 if opt else 0))
    return b"".join((header, query.question, *out_an, *out_ns, *out_ar, opt))


def _fit(records: list[bytes], room: int) -> tuple[list[bytes], int]:
    out = []
    for r in records:
        if len(r) > room:
            break
        out.append(r)
        room -= len(r)
    return out, room


def _fit_units(an: list[bytes], ns: list[bytes], ar: list[bytes], units, room: int):
    """(answer, additional) keeping whole units in order, as Consul trims an SRV answer: each SRV
    record stays with its target's addresses. None when the leading records and authority do not fit."""
    i = len(an) - sum(n for n, _ in units)
    if i < 0:
        return None
    out_an, out_ar = an[:i], []
    room -= sum(map(len, out_an)) + sum(map(len, ns))
    if room < 0:
        return None
    j = 0
    for n_an, n_ar in units:
        part_an, part_ar = an[i:i + n_an], ar[j:j + n_ar]
        need = sum(map(len, part_an)) + sum(map(len, part_ar))
        if need > room:
            break
        out_an += part_an
        out_ar += part_ar
        room -= need
        i, j = i + n_an, j + n_ar
    return out_an, out_ar


def error_response(query: Query, rcode: int, *, our_payload: int = 1232) -> bytes:
    return assemble(query, rcode, ([], [], []), limit=MAX_TCP, our_payload=our_payload, aa=False,
                    ra=False, set_tc=False)
