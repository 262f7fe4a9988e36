"""A hostname instance answers an A/AAAA query with a CNAME; resolve the target upstream and
append its records, so a stub resolver gets usable addresses in one answer (DESIGN §1)."""
from __future__ import annotations

import struct
from dataclasses import replace
from typing import TYPE_CHECKING

from ..dns import rdata
from ..dns.resolver import NOERROR, Answer, Record
from ..dns.wire import RD, Query
from .message import answer_records

if TYPE_CHECKING:
    from .forwarder import Forwarder

_CHASED = frozenset((rdata.A, rdata.AAAA, rdata.CNAME))


def cname_target(qtype: int, answer: Answer) -> str | None:
    """The lower-case target when the answer to an A/AAAA query is exactly one CNAME."""
    if qtype not in (rdata.A, rdata.AAAA) or len(answer.answer) != 1:
        return None
    rec = answer.answer[0]
    if rec.rtype != rdata.CNAME:
        return None
    labels, i, raw = [], 0, rec.rdata
    while i < len(raw) and raw[i]:
        labels.append(raw[i + 1:i + 1 + raw[i]].decode("latin-1").lower())
        i += 1 + raw[i]
    return ".".join(labels) + "."


async def chase(forwarder: "Forwarder", query: Query, answer: Answer, *, tcp: bool) -> Answer:
    """The answer with the CNAME target's A/AAAA (and CNAME chain) appended, when the forwarder
    can resolve it; the answer unchanged otherwise (the client can still chase the CNAME)."""
    target = cname_target(query.qtype, answer)
    if target is None or not forwarder.handles(target):
        return answer
    try:
        question = rdata.name(target) + struct.pack("!HH", query.qtype, 1)
    except (ValueError, UnicodeEncodeError):
        return answer
    sub = Query(0, RD, target, target, query.qtype, 1, question, None)
    hit = await forwarder.lookup(sub, tcp=tcp)
    if hit is None or hit.reply.rcode != NOERROR:
        return answer
    extra = tuple(Record(owner, rtype, ttl, value)
                  for owner, rtype, ttl, value in answer_records(hit.reply, types=_CHASED, ttl=hit.ttl))
    return replace(answer, answer=answer.answer + extra)
