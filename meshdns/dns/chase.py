"""A hostname instance answers an A/AAAA query with a CNAME; for a client offered recursion the
target is resolved upstream and its records appended, so a stub resolver gets usable addresses
in one answer (DESIGN §1)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import rdata
from .wire import A, AAAA, CNAME, NOERROR, RD, Query, read_name, read_record

if TYPE_CHECKING:
    from ..forward.forwarder import Forwarder
    from ..forward.message import Reply

CHASED_QTYPES = (A, AAAA)              # queries whose lone CNAME answer is followed
_CHASED = frozenset((A, AAAA, CNAME))   # record types taken from the upstream's answer


async def chase(forwarder: "Forwarder", query: Query, target: str, *, tcp: bool) -> tuple[bytes, ...]:
    """The target's A/AAAA records (and CNAME chain) from upstream, ready to append to the answer;
    () when it cannot be resolved (the client can still chase the CNAME itself)."""
    try:
        question = rdata.name(target) + struct.pack("!HH", query.qtype, 1)
    except (ValueError, UnicodeEncodeError):
        return ()
    found = await forwarder.lookup(Query(0, RD, target, target, query.qtype, 1, question, None), tcp=tcp)
    if found is None or found[0].reply.rcode != NOERROR:
        return ()
    cached, now = found
    return answer_records(cached.reply, cached.ttls_at(now))


def answer_records(reply: "Reply", ttls) -> tuple[bytes, ...]:
    """The reply's answer records of the chased types, names decompressed so they can be copied into
    another message (only names meshdns can encode again: no escaped or 8-bit labels)."""
    data, pos, out = reply.data, reply.start, []
    for i in range(reply.counts[0]):
        owner, rtype, _, _, start, pos = read_record(data, pos)
        if rtype not in _CHASED:
            continue
        try:
            value = rdata.name(read_name(data, start)[0]) if rtype == CNAME else data[start:pos]
            out.append(rdata.record(owner, rtype, ttls[i], value))
        except (ValueError, UnicodeEncodeError):
            continue
    return tuple(out)
