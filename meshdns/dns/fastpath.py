"""The per-query hot path: common-shape queries answered from pre-encoded plans.

A query of the usual shape (QUERY, one uncompressed IN question, at most one
OPT of version 0) is keyed by its lower-cased wire name and type. The first
time a key is seen its Plan is built by the resolver and encoded once; later
queries only check that the snapshot objects the plan was built from are still
the same objects (a change to one service invalidates that service's answers
only), run the weighted shuffle with the same RNG calls `realize` makes, and
join bytes. Anything else returns None and goes to the general path, which
gives byte-identical answers (tests compare the two). A UDP packet answered
here twice has all its possible replies rendered (replay.py), and the handler
serves its repeats from those before it gets here.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Callable

from cachetools import LRUCache

from ..catalog.snapshot import Snapshot
from ..forward.cache import Countdown
from . import rdata
from .replay import Forwarded, Replay, ReplayTable, orders_for
from .resolver import Plan, ResolverOptions, plan, soa_record, still_valid
from .weighting import weighted_order, weighted_pick
from .wire import Edns, Query, assemble, encode_record, parse_query

_H = struct.Struct("!HHHHHH")
_QR, _AA, _RA = 0x8000, 0x0400, 0x0080


@dataclass(slots=True)
class Compiled:
    """A Plan with every record already in wire form."""

    version: int
    plan: Plan
    # per group: (weight, units, label, unit weights, (answer, additional) records per unit or None,
    # prefix bytes, prefix count); per unit: (weight, answer bytes, additional bytes, answer count,
    # additional count)
    groups: tuple
    static: tuple[bytes, bytes, int, int] | None  # (answer, additional, counts) when nothing is shuffled
    authority: tuple[bytes, ...]
    forward: bool
    cname_only: bool  # one CNAME answer: with recursion the general path resolves its target
    group_weights: list = field(default_factory=list)
    qname: str = ""   # lower-case, for forwarder cache keys
    count_key: tuple = ()  # (qtype, rcode, name kind): the queries counter this answer bumps
    orders: tuple | None = None  # per group, every shuffle it can get (see replay.py); None: not replayable


def compile_plan(p: Plan, version: int) -> Compiled:
    groups = []
    for g in p.groups:
        units = tuple((u.weight, b"".join(encode_record(r) for r in u.answer),
                       b"".join(encode_record(r) for r in u.additional), len(u.answer), len(u.additional))
                      for u in g.units)
        weights = [u[0] for u in units]
        shapes = {(u[3], u[4]) for u in units}
        groups.append((g.weight, units, g.label, weights, shapes.pop() if len(shapes) == 1 else None,
                       b"".join(encode_record(r) for r in g.prefix), len(g.prefix)))
    static = None
    if not groups:
        static = (b"", b"", 0, 0)
    elif len(groups) == 1 and len(groups[0][1]) <= 1:
        _, units, _, _, _, prefix, n_prefix = groups[0]
        _, an, ar, n_an, n_ar = units[0] if units else (0, b"", b"", 0, 0)
        static = (prefix + an, ar, n_prefix + n_an, n_ar)
    authority = () if p.soa_domain else tuple(encode_record(r) for r in p.authority)
    # every answer is one CNAME (to a name we do not serve): with recursion the general path resolves it
    cname_only = bool(p.groups) and all([r.rtype for r in g.prefix + tuple(r for u in g.units for r in u.answer)]
                                        == [rdata.CNAME] for g in p.groups)
    orders = None if p.forward else tuple(orders_for(g[3]) for g in groups)
    if orders is not None and None in orders:
        orders = None
    return Compiled(version, p, tuple(groups), static, authority, p.forward, cname_only,
                    group_weights=[g[0] for g in groups], orders=orders)


class FastPath:
    def __init__(self, opts: ResolverOptions, *, udp_payload: int, enable_truncate: bool, max_entries: int = 200_000):
        self.opts = opts
        self.udp_payload = udp_payload
        self.enable_truncate = enable_truncate
        self.max_entries = max_entries
        # least recently used goes first: a flood of one-off names cannot push out the names asked every day
        self.cache: LRUCache = LRUCache(max_entries)
        self.replay = ReplayTable()
        self._soa: dict[str, bytes] = {}
        self._soa_version = -1
        # set by the handler: a cached forwarded reply for a Query, or None (then the general path
        # fetches); and how that reply's TTLs count down, for replaying it
        self.forward_hit: Callable[[Query], bytes | None] | None = None
        self.forward_countdown: Callable[[Query], Countdown | None] | None = None
        self._opt = {False: b"\x00\x00\x29" + struct.pack("!HIH", udp_payload, 0, 0),
                     True: b"\x00\x00\x29" + struct.pack("!HIH", udp_payload, 0x8000, 0)}

    def lookup(self, key: bytes, qname: str, qtype: int, snap: Snapshot) -> Compiled:
        entry = self.cache.get(key)
        if entry is not None:
            if entry.version == snap.version:
                return entry
            if still_valid(entry.plan.deps, snap):
                entry.version = snap.version
                return entry
        entry = compile_plan(plan(qname, qtype, snap, self.opts), snap.version)
        entry.qname = qname
        entry.count_key = (qtype, entry.plan.rcode, entry.plan.kind)
        self.cache[key] = entry
        return entry

    def soa_bytes(self, domain: str, snap: Snapshot) -> bytes:
        if self._soa_version != snap.version:
            self._soa = {}
            self._soa_version = snap.version
        raw = self._soa.get(domain)
        if raw is None:
            raw = self._soa[domain] = encode_record(soa_record(domain, snap, self.opts))
        return raw

    def answer(self, data: bytes, snap: Snapshot, rng: random.Random, *, tcp: bool,
               ra: bool) -> tuple[bytes, Compiled, str] | None:
        """(reply, the compiled answer, chosen split target) for a common-shape query, or None."""
        n = len(data)
        if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00" or data[10]:
            return None
        arcount = data[11]
        # Where the question ends, read from the tail: no additional record, or an OPT without
        # options (what stub resolvers send). A hit on these exact name bytes proves the parse;
        # anything else is walked label by label below.
        if arcount == 0:
            qend = n - 4
        elif arcount == 1 and data[n - 11:n - 8] == b"\x00\x00\x29" and data[n - 2:n] == b"\x00\x00":
            qend = n - 15
        else:
            qend = 0
        entry = None
        if qend > 12 and data[qend - 1] == 0 and data[qend + 2:qend + 4] == b"\x00\x01":
            key = data[12:qend].lower() + data[qend:qend + 2]
            entry = self.cache.get(key)
        if entry is None or entry.version != snap.version:
            qend = _question_end(data, n, arcount)
            if qend < 0:
                return None
            key = data[12:qend].lower() + data[qend:qend + 2]
            entry = self.cache.get(key)
            if entry is None or entry.version != snap.version:
                try:
                    qname = _text_name(data, qend)
                except UnicodeDecodeError:
                    return None
                entry = self.lookup(key, qname, data[qend] << 8 | data[qend + 1], snap)
        if arcount:
            opt = qend + 4
            if data[opt + 6]:
                return None  # EDNS version > 0: BADVERS from the general path
            edns_payload = data[opt + 3] << 8 | data[opt + 4]
            limit = 65535 if tcp else max(512, min(edns_payload, self.udp_payload))
        else:
            edns_payload = 0
            limit = 65535 if tcp else 512
        if entry.forward:
            if not ra or self.forward_hit is None:
                return None
            qtype = data[qend] << 8 | data[qend + 1]
            edns = Edns(max(512, edns_payload), 0, bool(data[qend + 11] & 0x80)) if arcount else None
            query = Query(data[0] << 8 | data[1], data[2] << 8 | data[3], entry.qname, entry.qname, qtype, 1,
                          data[12:qend + 4], edns)
            reply = self.forward_hit(query)
            if reply is None or len(reply) > limit:
                return None
            if not tcp and self.forward_countdown is not None and self.replay.wanted(data, True, snap.version):
                countdown = self.forward_countdown(query)
                if countdown is not None:
                    self.replay.keep_forwarded(data, Forwarded(
                        snap.version, entry.plan.deps, reply[2:], (qtype, reply[3] & 0xF, "forward"),
                        countdown.stored, countdown.expires, tuple(o - 2 for o in countdown.offsets),
                        countdown.bases, countdown.touch))
            return reply, entry, ""
        p = entry.plan
        if ra and entry.cname_only and entry.count_key[0] in (rdata.A, rdata.AAAA):
            return None
        flags = _QR | (data[2] << 8 & 0x0100) | (data[3] & 0x10) | p.rcode
        if p.authoritative:
            flags |= _AA
        if ra:
            flags |= _RA
        authority = entry.authority
        if p.soa_domain:
            authority = (self.soa_bytes(p.soa_domain, snap),)
        opt = self._opt[bool(data[qend + 11] & 0x80)] if arcount else b""
        target = ""
        if entry.static is not None:
            an_part, ar_part, n_an, n_ar = entry.static
            if entry.groups:
                target = entry.groups[0][2]
        else:
            groups = entry.groups
            group = groups[0] if len(groups) == 1 else groups[weighted_pick(entry.group_weights, rng)]
            _, units, target, weights, shape, prefix, n_prefix = group
            if len(units) > 1:
                units = [units[i] for i in weighted_order(weights, rng)]
            if p.limit and len(units) > p.limit:
                units = units[:p.limit]
            an_part = b"".join([u[1] for u in units])
            ar_part = b"".join([u[2] for u in units])
            if shape is not None:
                n_an, n_ar = shape[0] * len(units), shape[1] * len(units)
            else:
                n_an = sum(u[3] for u in units)
                n_ar = sum(u[4] for u in units)
            if n_prefix:
                an_part, n_an = prefix + an_part, n_prefix + n_an
        size = qend + 4 + len(an_part) + len(ar_part) + len(opt)
        for rec in authority:
            size += len(rec)
        if size > limit:
            # rare: cut back into records and trim exactly as the general path does (whole units)
            sections = (_split_records(an_part), list(authority), _split_records(ar_part))
            chosen = units if entry.static is None else entry.groups[0][1] if entry.groups else ()
            reply = assemble(parse_query(data), p.rcode, sections, limit=limit, our_payload=self.udp_payload,
                             aa=p.authoritative, ra=ra, set_tc=self.enable_truncate,
                             units=[(u[3], u[4]) for u in chosen])
            return reply, entry, target
        header = _H.pack(data[0] << 8 | data[1], flags, 1, n_an, len(authority), n_ar + (1 if arcount else 0))
        if not tcp and entry.orders is not None and self.replay.wanted(data, ra, snap.version):
            replay = _render(entry, snap.version, flags, data[12:qend + 4], authority, opt, limit)
            if replay is not None:
                self.replay.keep(data, ra, replay)
        return b"".join((header, data[12:qend + 4], an_part, *authority, ar_part, opt)), entry, target


def _render(entry: Compiled, version: int, flags: int, question: bytes, authority: tuple[bytes, ...],
            opt: bytes, limit: int) -> Replay | None:
    """Every reply `answer` can give for this packet, after the ID; None when one would need trimming."""
    p = entry.plan
    fixed = (len(authority), 1 if opt else 0)
    auth = b"".join(authority)
    groups = entry.groups or ((0, ((0, b"", b"", 0, 0),), "", [0], None, b"", 0),)  # no records: one empty unit
    rendered, size = [], 0
    for (_, units, _, _, _, prefix, n_prefix), orders in zip(groups, entry.orders or ([[0]],)):
        tails = []
        for order in orders:
            chosen = [units[i] for i in order]
            if p.limit and len(chosen) > p.limit:
                chosen = chosen[:p.limit]
            tail = b"".join((_H.pack(0, flags, 1, n_prefix + sum(u[3] for u in chosen), fixed[0],
                                     sum(u[4] for u in chosen) + fixed[1])[2:], question, prefix,
                             *(u[1] for u in chosen), auth, *(u[2] for u in chosen), opt))
            if len(tail) + 2 > limit:
                return None
            tails.append(tail)
            size += len(tail)
        rendered.append(tuple(tails))
    targets = tuple(g[2] for g in entry.groups) or ("",)
    return Replay(version, tuple(rendered), entry.group_weights, targets, entry.count_key, p.split, size,
                  None if p.soa_domain else p.deps, entry.qname)


def _question_end(data: bytes, n: int, arcount: int) -> int:
    """Walk the question name; the offset just after it, or -1 when the packet is not the common shape."""
    pos = 12
    while True:
        length = data[pos]
        if length == 0:
            break
        if length > 63:
            return -1
        pos += length + 1
        if pos >= n:
            return -1
    qend = pos + 1
    if qend + 4 > n or qend - 12 > 255 or data[qend + 2:qend + 4] != b"\x00\x01":
        return -1
    pos = qend + 4
    if arcount == 0:
        return qend if pos == n else -1
    if pos + 11 > n or data[pos] or data[pos + 1:pos + 3] != b"\x00\x29":
        return -1
    return qend if pos + 11 + (data[pos + 9] << 8 | data[pos + 10]) == n else -1


def _text_name(data: bytes, qend: int) -> str:
    labels = []
    pos = 12
    while data[pos]:
        length = data[pos]
        label = data[pos + 1:pos + 1 + length].decode("ascii").lower()
        if "." in label or "\\" in label:
            raise UnicodeDecodeError("ascii", b"", 0, 1, "dot in label")
        labels.append(label)
        pos += length + 1
    return ".".join(labels) + "." if labels else "."


def _split_records(raw: bytes) -> list[bytes]:
    """Cut a run of encoded records back into single records (owner, fixed part, rdata)."""
    out, pos = [], 0
    while pos < len(raw):
        start = pos
        if raw[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while raw[pos]:
                pos += raw[pos] + 1
            pos += 1
        rdlen = raw[pos + 8] << 8 | raw[pos + 9]
        pos += 10 + rdlen
        out.append(raw[start:pos])
    return out
