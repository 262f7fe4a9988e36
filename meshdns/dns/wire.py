"""DNS wire format, shared by the answering side and the forwarder. No I/O.

Every reply meshdns sends is assembled by `reply` (header flags, the OPT
record, the counts) and trimmed to fit by `answer`; `read_name` is the one
walker of (compressed) names. Queries are parsed by hand (header, one question,
the OPT record) because that is all a resolver needs. Any problem the client
caused raises WireError carrying the rcode to send.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
QR, OPCODE, AA, TC, RD, RA, AD, CD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
A, NS, CNAME, SOA, PTR, HINFO, TXT, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 13, 16, 28, 33, 41, 255
MAX_TCP = 65535
HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")


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
    def do(self) -> bool:
        return self.edns is not None and self.edns.do


def read_name(data: bytes, pos: int, *, allow_pointers: bool = True) -> tuple[str, int]:
    """A domain name at pos -> (text, position after it). Loops and overruns raise WireError."""
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


def read_record(data: bytes, pos: int) -> tuple[str, int, int, int, int, int]:
    """The resource record at pos -> (owner, type, class, ttl, rdata start, position after it)."""
    owner, pos = read_name(data, pos)
    if pos + 10 > len(data):
        raise WireError(FORMERR, "truncated resource record")
    rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(data, pos)
    start = pos + 10
    if start + rdlen > len(data):
        raise WireError(FORMERR, "rdata runs past the end of the packet")
    return owner, rtype, rclass, ttl, start, start + rdlen


def own_domain(qname: str, domains: tuple[str, ...]) -> str | None:
    """The (longest) of our domains that contains qname, else None. Names are lower-case FQDNs."""
    best = None
    for d in domains:
        if (qname == d or qname.endswith("." + d)) and (best is None or len(d) > len(best)):
            best = d
    return best


def parse_query(data: bytes) -> Query:
    if len(data) < 12:
        raise WireError(None, "shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
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
            _, rtype, rclass, ttl, _, pos = read_record(data, pos)
            if index >= ancount + nscount and rtype == OPT:
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


def limit_for(query: Query, *, tcp: bool, our_payload: int) -> int:
    """The most bytes a reply to this query may have."""
    if tcp:
        return MAX_TCP
    if query.edns is None:
        return 512
    return max(512, min(query.edns.payload, our_payload))


# ---------------------------------------------------------------------------
# replies


def reply(query: Query, rcode: int, body: bytes = b"", an: int = 0, ns: int = 0, ar: int = 0, *,
          our_payload: int, aa: bool = False, ra: bool = False, tc: bool = False, ad: bool = False,
          options: bytes = b"") -> bytes:
    """Header, the question as asked, `body` (an + ns + ar records) and our OPT when the client sent one.

    The client's opcode, RD and CD are echoed; an rcode above 15 goes in the OPT (BADVERS)."""
    flags = QR | (query.flags & (OPCODE | RD | CD)) | (rcode & 0xF)
    if aa:
        flags |= AA
    if ra:
        flags |= RA
    if tc:
        flags |= TC
    if ad:
        flags |= AD
    opt = b""
    if query.edns is not None:
        opt = b"\x00" + RR_FIXED.pack(OPT, our_payload, ((rcode >> 4) << 24) | (0x8000 if query.edns.do else 0),
                                      len(options)) + options
        ar += 1
    return b"".join((HEADER.pack(query.id, flags, 1 if query.question else 0, an, ns, ar), query.question,
                     body, opt))


def error(query: Query, rcode: int, *, our_payload: int) -> bytes:
    return reply(query, rcode, our_payload=our_payload)


def room(query: Query, limit: int) -> int:
    """Bytes left for records in a reply of at most `limit` bytes."""
    return limit - 12 - len(query.question) - (11 if query.edns is not None else 0)


def answer(query: Query, rcode: int, an: list[bytes], ns: list[bytes], ar: list[bytes], *, limit: int,
           our_payload: int, aa: bool, ra: bool, set_tc: bool, units=()) -> bytes:
    """A reply carrying these records, whole records trimmed to `limit` bytes (TC set if answers were cut).

    units: (answer, additional) record counts per unit after any leading answer records; an answer with
    additional records is trimmed to whole units (an SRV record stays with its target's addresses)."""
    left = room(query, limit)
    tc = False
    size = sum(map(len, an)) + sum(map(len, ns)) + sum(map(len, ar))
    if size > left:
        fitted = _fit_units(an, ns, ar, units, left) if units and ar else None
        out_an, out_ns, out_ar = an, ns, ar
        if fitted is not None:
            out_an, out_ar = fitted
        else:
            out_an, left = _fit(an, left)
            out_ns, left = _fit(ns, left) if len(out_an) == len(an) else ([], left)
            out_ar, left = _fit(ar, left) if len(out_ns) == len(ns) else ([], left)
        tc = set_tc and (len(out_an) < len(an) or len(out_ns) < len(ns))
        an, ns, ar = out_an, out_ns, out_ar
    return reply(query, rcode, b"".join((*an, *ns, *ar)), len(an), len(ns), len(ar), our_payload=our_payload,
                 aa=aa, ra=ra, tc=tc)


def _fit(records: list[bytes], left: int) -> tuple[list[bytes], int]:
    out = []
    for r in records:
        if len(r) > left:
            break
        out.append(r)
        left -= len(r)
    return out, left


def _fit_units(an: list[bytes], ns: list[bytes], ar: list[bytes], units, left: int):
    """(answer, additional) keeping whole units in order, as Consul trims an SRV answer: each SRV
    record stays with its target's addresses. None when the leading records and authority do not fit."""
    i = len(an) - sum(n for n, _ in units)
    if i < 0:
        return None
    out_an, out_ar = an[:i], []
    left -= sum(map(len, out_an)) + sum(map(len, ns))
    if left < 0:
        return None
    j = 0
    for n_an, n_ar in units:
        part_an, part_ar = an[i:i + n_an], ar[j:j + n_ar]
        need = sum(map(len, part_an)) + sum(map(len, part_ar))
        if need > left:
            break
        out_an += part_an
        out_ar += part_ar
        left -= need
        i, j = i + n_an, j + n_ar
    return out_an, out_ar
