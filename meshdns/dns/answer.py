"""A Plan in wire form, and the reply for each choice it allows.

Compiling encodes every record once. An answer's only per-query freedom is
the choice `weighting.choose` makes (a group, then the order of its units);
`render` turns one choice into a reply through `wire.answer`, the one
assembler. When a group's orders can be listed, each choice has an index
(see Choices), so a cache can keep the reply rendered for it.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import rdata
from .resolver import Plan, Record
from .weighting import Choices, Order
from .wire import Query, answer, read_name


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
    version: int                     # the snapshot version the plan was last found valid at
    groups: tuple[WireGroup, ...] = ()
    authority: tuple[bytes, ...] = ()
    choices: Choices | None = None   # what each answer chooses (weighting.choose)
    count_key: tuple = ()            # (qtype, rcode, name kind) for the queries counter
    split_keys: tuple = ()           # per group: (split, target) for the split answers counter
    zone_keys: tuple = ()            # per group: "same_zone" | "cross_zone" for the locality counter (or None)
    cname_only: bool = False         # every group answers one CNAME: with recursion its target is resolved
    records_size: int = 0            # bytes of records in the biggest reply (for a cache's budget)
    size: int = 1                    # for the table of compiled plans (a count)
    stamp: int = 0                   # for the table's recency (cache.Table)

    @property
    def variants(self) -> int:
        """How many replies can be listed (one per group and order that can be)."""
        return self.choices.count if self.groups else 1

    @property
    def fixed(self) -> bool:
        """One reply only: nothing to choose, no random number drawn (choose gives group 0, order 0)."""
        orders = self.choices.orders
        return not orders or (len(orders) == 1 and orders[0] is not None and len(orders[0]) == 1)

    @property
    def forward(self) -> bool:
        return self.plan.forward


def compile_plan(p: Plan, qtype: int, version: int) -> Compiled:
    groups = []
    for g in p.groups:
        units = tuple(WireUnit(u.weight, tuple(map(_record, u.answer)), tuple(map(_record, u.additional)))
                      for u in g.units)
        answers = g.prefix + tuple(r for u in g.units for r in u.answer)
        groups.append(WireGroup(g.weight, g.label, tuple(map(_record, g.prefix)), units, _lone_cname(answers)))
    kind = "split" if p.split else p.kind
    authority = tuple(map(_record, p.authority))
    size = max((sum(map(len, g.prefix)) + sum(len(r) for u in g.units for r in u.an + u.ar) for g in groups),
               default=0) + sum(map(len, authority)) + (120 if p.soa_domain else 0)
    choices = Choices.of([g.weight for g in groups], [[u.weight for u in g.units] for g in groups])
    zones = tuple(None if g.same_zone is None else LOCALITY[g.same_zone] for g in p.groups)
    return Compiled(p, version, tuple(groups), authority, choices, (qtype, p.rcode, kind),
                    tuple((p.split, g.label) for g in groups) if p.split else (),
                    zones if any(zones) else (), bool(groups) and all(g.cname for g in groups), size)


LOCALITY = {True: "same_zone", False: "cross_zone"}   # meshdns_locality_answers_total's result label


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
