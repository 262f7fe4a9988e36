"""Prepared queries: which query a name runs, what a template makes of it, where the answer comes from.

Pure functions over a Snapshot, shared by DNS (`<name>.query.consul`) and the API
(`/v1/query/<id or name>/execute`), so both give the same answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Mapping

from .model import Health, Instance, PreparedQuery
from .snapshot import Snapshot

# ${name.full}, ${name.prefix}, ${name.suffix}, ${match(N)}: the variables a template may use
VARIABLE = re.compile(r"\$\{\s*(?:(name\.full|name\.prefix|name\.suffix)|match\(\s*(\d+)\s*\))\s*\}")
ANY_VARIABLE = re.compile(r"\$\{[^}]*\}?")


def find(queries: Mapping[str, PreparedQuery], name_or_id: str) -> PreparedQuery | None:
    """By ID, then the query of exactly that name, then the template whose name is its longest prefix."""
    found = queries.get(name_or_id)
    if found is not None:
        return found
    key = name_or_id.lower()
    best = None
    for q in queries.values():
        if q.name == key and (q.name or q.template):
            return q
        if q.template and key.startswith(q.name) and (best is None or len(q.name) > len(best.name)):
            best = q
    return best


def interpolate(text: str, values: Mapping[str, str], groups: tuple[str | None, ...]) -> str:
    def one(m: re.Match) -> str:
        if m.group(2) is not None:
            n = int(m.group(2))
            return (groups[n] or "") if n < len(groups) else ""
        return values[m.group(1)]
    return VARIABLE.sub(one, text)


def render(q: PreparedQuery, name: str) -> PreparedQuery:
    """A template made concrete for the name it was looked up by (lower-case); a static query as is."""
    if not q.template:
        return q
    name = name.lower()
    values = {"name.full": name, "name.prefix": q.name, "name.suffix": name[len(q.name):]}
    groups: tuple[str | None, ...] = ()
    if q.regexp:
        m = re.search(q.regexp, name)
        if m is not None:
            groups = (m.group(0),) + m.groups()
    tags = tuple(interpolate(t, values, groups) for t in q.tags)
    if q.remove_empty_tags:
        tags = tuple(t for t in tags if t and t != "!")
    return replace(q, service=interpolate(q.service, values, groups).lower(), tags=tags,
                   datacenters=tuple(interpolate(d, values, groups).lower() for d in q.datacenters))


def failover_datacenters(q: PreparedQuery, *, local: str, peers: tuple[str, ...]) -> list[str]:
    """NearestN takes the first N peers in configuration order, then Datacenters; each once, never ours."""
    out: list[str] = []
    for dc in (*peers[:q.nearest_n], *q.datacenters):
        if dc != local and dc not in out:
            out.append(dc)
    return out


def eligible(snap: Snapshot, instances: tuple[Instance, ...], q: PreparedQuery) -> list[Instance]:
    """Healthy (passing only, with OnlyPassing), with every tag and without every "!tag", meta matching."""
    worst = Health.PASSING if q.only_passing else Health.WARNING
    wanted = {t.lower() for t in q.tags if not t.startswith("!")}
    unwanted = {t[1:].lower() for t in q.tags if t.startswith("!")}
    out = []
    for inst in instances:
        if inst.health > worst:
            continue
        tags = {t.lower() for t in inst.tags}
        if not wanted <= tags or unwanted & tags:
            continue
        if q.service_meta and not set(q.service_meta) <= set(inst.meta):
            continue
        if q.node_meta:
            node = snap.node(inst.node, inst.datacenter) if inst.node else None
            if node is None or not set(q.node_meta) <= set(node.meta):
                continue
        out.append(inst)
    return out


@dataclass(frozen=True, slots=True)
class Outcome:
    datacenter: str                   # where the instances come from (the last one tried when none)
    instances: tuple[Instance, ...]
    failovers: int                    # remote datacenters asked (0: answered locally)
    tried: tuple[str, ...]            # every datacenter looked at, in order


def execute(snap: Snapshot, q: PreparedQuery, *, peers: tuple[str, ...]) -> Outcome:
    """The local datacenter's eligible instances, else those of the first failover datacenter that has some."""
    order = [snap.datacenter] + failover_datacenters(q, local=snap.datacenter, peers=peers)
    service = q.service.lower()
    for n, dc in enumerate(order):
        found = eligible(snap, snap.services.get((dc, service), ()), q)
        if found:
            return Outcome(dc, tuple(found), n, tuple(order[:n + 1]))
    return Outcome(order[-1], (), len(order) - 1, tuple(order))
