"""The immutable catalog snapshot readers use without locks.

A Snapshot is never mutated after it is built; `Store` derives the next one
from the previous by copying the top-level indexes and rebuilding only the
entries that changed, so unchanged services keep their identity (the DNS
fast path relies on `is` to know a cached answer is still good).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .model import Instance, Intention, Node, NodeKey, PreparedQuery, ServiceKey, Split, Zone, ZoneRecord


@dataclass(frozen=True, slots=True)
class ZoneIndex:
    """One authoritative zone, indexed by owner name for O(1) lookups."""

    zone: Zone
    by_name: Mapping[str, tuple[ZoneRecord, ...]]
    names: frozenset[str]  # owners plus empty non-terminals (NODATA, not NXDOMAIN)

    @classmethod
    def build(cls, zone: Zone) -> "ZoneIndex":
        by_name: dict[str, list[ZoneRecord]] = {}
        for rec in zone.records:
            by_name.setdefault(rec.name, []).append(rec)
        names = set()
        for owner in by_name:
            name = owner
            while name.endswith(zone.origin) and name not in names:
                names.add(name)
                if name == zone.origin:
                    break
                name = name.split(".", 1)[1]
        return cls(zone, MappingProxyType({k: tuple(v) for k, v in by_name.items()}), frozenset(names))


def _empty() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int = 0
    datacenter: str = "dc1"
    services: Mapping[ServiceKey, tuple[Instance, ...]] = field(default_factory=_empty)
    nodes: Mapping[NodeKey, Node] = field(default_factory=_empty)
    splits: Mapping[str, Split] = field(default_factory=_empty)
    zones: Mapping[str, ZoneIndex] = field(default_factory=_empty)
    ip_services: Mapping[str, frozenset[ServiceKey]] = field(default_factory=_empty)
    ip_nodes: Mapping[str, frozenset[NodeKey]] = field(default_factory=_empty)
    datacenters: frozenset[str] = field(default_factory=frozenset)
    intentions: Mapping[str, Intention] = field(default_factory=_empty)  # destination service -> entry
    queries: Mapping[str, PreparedQuery] = field(default_factory=_empty)  # prepared queries by ID

    def instances(self, name: str, datacenter: str | None = None) -> tuple[Instance, ...]:
        return self.services.get((datacenter or self.datacenter, name.lower()), ())

    def node(self, name: str, datacenter: str | None = None) -> Node | None:
        return self.nodes.get((datacenter or self.datacenter, name.lower()))

    def instance_address(self, inst: Instance) -> str:
        """The instance's own address, else its node's (Consul's fallback)."""
        if inst.address:
            return inst.address
        node = self.nodes.get((inst.datacenter, inst.node.lower())) if inst.node else None
        return node.address if node else ""

    def zone_for(self, qname: str) -> ZoneIndex | None:
        """The longest zone origin that contains qname (lower-case, fully qualified)."""
        name = qname
        while True:
            z = self.zones.get(name)
            if z is not None:
                return z
            if name == "." or "." not in name[:-1]:
                return self.zones.get(".")
            name = name.split(".", 1)[1]
