"""A Plan in wire form, and the reply for each choice it allows.

Compiling encodes every record once. An answer's only per-query freedom is
the choice `weighting.choose` makes (a group, then the order of its units);
`render` turns one choice into a reply through `wire.answer`, the one
assembler. When a group's orders can be listed, each choice has an index
(`variant`), so a cache can keep the reply rendered for it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import rdata
from .resolver import Plan, Record
from .weighting import Order, choose, orders_for
from .wire import A, AAAA, Query, answer, read_name


@dataclass(frozen=True, slots=True)
class WireUnit:
    weight: float
    an: tuple[bytes, ...]
    ar: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class WireGroup:
    weight: float
    label: str                       # the split target it serves ("" when none)
    prefix: tuple[bytes, ...]        # answer records before the units (a CNAME chain)
    units: tuple[WireUnit, ...]
    weights: tuple[float, ...]       # the units' shuffle weights
    orders: tuple | None             # every order of the units, when they can be listed (weighting.orders_for)
    offset: int                      # the variant index of this group's first order
    cname: str = ""                  # the target, when the group answers one CNAME and nothing else


def _record(r: Record) -> bytes:
    return rdata.record(r.name, r.rtype, r.ttl, r.rdata)


def _lone_cname(records: tuple[Record, ...]) -> str:
    if len(records) != 1 or records[0].rtype != rdata.CNAME:
        return ""
    return read_name(records[0].rdata, 0, allow_pointers=False)[0].lower()


@dataclass(slots=True)
class Compiled:
    plan: Plan
    qtype: int
    version: int                     # the snapshot version the plan was last found valid at
    groups: tuple[WireGroup, ...] = ()
    authority: tuple[bytes, ...] = ()
    variants: int = 0                # how many replies can be listed (for groups whose orders can be)
    count_key: tuple = ()            # (qtype, rcode, name kind) for the queries counter
    split_keys: tuple = ()           # per group: (split, target) for the split answers counter
    cname_only: bool = False         # every group answers one CNAME: with recursion its target is resolved
    records_size: int = 0            # bytes of records in the biggest reply (for a cache's budget)
    size: int = 1
    _weights: tuple = field(default=(), repr=False)

    def choose(self, rng: random.Random) -> tuple[int, int, Order]:
        """(group, variant index or -1 when the order cannot be listed, order)."""
        g, k, order = choose(self._weights[0], self._weights[1], self._weights[2], rng)
        return g, (self.groups[g].offset + k if k >= 0 and self.groups else k), order

    @property
    def forward(self) -> bool:
        return self.plan.forward


def compile_plan(p: Plan, qtype: int, version: int) -> Compiled:
    groups, offset = [], 0
    for g in p.groups:
        units = tuple(WireUnit(u.weight, tuple(map(_record, u.answer)), tuple(map(_record, u.additional)))
                      for u in g.units)
        weights = tuple(u.weight for u in units)
        orders = orders_for(weights)
        answers = g.prefix + tuple(r for u in g.units for r in u.answer)
        groups.append(WireGroup(g.weight, g.label, tuple(map(_record, g.prefix)), units, weights, orders,
                                offset, _lone_cname(answers)))
        offset += len(orders) if orders is not None else 0
    kind = "split" if p.split else p.kind
    authority = tuple(map(_record, p.authority))
    size = max((sum(map(len, g.prefix)) + sum(len(r) for u in g.units for r in u.an + u.ar) for g in groups),
               default=0) + sum(map(len, authority)) + (120 if p.soa_domain else 0)
    c = Compiled(p, qtype, version, tuple(groups), authority, offset if groups else 1,
                 (qtype, p.rcode, kind), tuple((p.split, g.label) for g in groups) if p.split else (),
                 bool(groups) and all(g.cname for g in groups), size)
    c._weights = ([g.weight for g in groups], [g.orders for g in groups], [g.weights for g in groups])
    return c


def render(c: Compiled, query: Query, g: int, order: Order, *, soa: bytes, ra: bool, limit: int,
           our_payload: int, set_tc: bool, extra: tuple[bytes, ...] = ()) -> bytes:
    """The reply for one choice (`extra`: answer records to append, resolved elsewhere)."""
    p = c.plan
    an: list[bytes] = []
    ar: list[bytes] = []
    units = []
    if c.groups:
        group = c.groups[g]
        chosen = [group.units[i] for i in order]
        if p.limit:
            chosen = chosen[:p.limit]
        an += group.prefix
        for u in chosen:
            an += u.an
            ar += u.ar
        units = [(len(u.an), len(u.ar)) for u in chosen]
    an += extra
    ns = [soa] if p.soa_domain else list(c.authority)
    return answer(query, p.rcode, an, ns, ar, limit=limit, our_payload=our_payload, aa=p.authoritative, ra=ra,
                  set_tc=set_tc, units=units)


def chased_type(qtype: int) -> bool:
    """Types for which a lone CNAME to a name elsewhere is followed upstream for clients offered recursion."""
    return qtype in (A, AAAA)
