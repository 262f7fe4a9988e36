"""Catalog values. Frozen, hashable, shared between snapshots without copying."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


class Health(enum.IntEnum):
    """Ordered worst-last so the aggregate of several checks is max()."""

    PASSING = 0
    WARNING = 1
    CRITICAL = 2
    MAINTENANCE = 3

    @property
    def api_name(self) -> str:
        return "maintenance" if self is Health.MAINTENANCE else self.name.lower()

    @classmethod
    def parse(cls, text: str) -> "Health":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown health status {text!r} (passing, warning, critical)") from None


@dataclass(frozen=True, slots=True)
class Weights:
    passing: int = 1
    warning: int = 1

    def for_health(self, health: Health) -> int:
        return self.passing if health is Health.PASSING else self.warning


Meta = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    address: str
    datacenter: str
    meta: Meta = ()
    source: str = ""


@dataclass(frozen=True, slots=True)
class Instance:
    """One service instance. `address` is an IP, a hostname, or "" (use the node's)."""

    id: str
    service: str
    datacenter: str
    address: str = ""
    port: int = 0
    node: str = ""
    tags: tuple[str, ...] = ()
    meta: Meta = ()
    weights: Weights = field(default_factory=Weights)
    health: Health = Health.PASSING
    source: str = ""


class Revision(NamedTuple):
    """When an entry was created and last changed, as a store revision (an etcd key's create_revision and
    mod_revision) or a catalog version: what the API shows as CreateIndex and ModifyIndex."""

    create: int
    mod: int


@dataclass(frozen=True, slots=True)
class SplitTarget:
    service: str
    weight: float
    tag: str = ""
    datacenter: str = ""   # "" = ours; else a peer's (an imported copy of its service)


@dataclass(frozen=True, slots=True)
class Split:
    name: str
    targets: tuple[SplitTarget, ...]
    ttl: float | None = None
    on_all_unhealthy: str = "nxdomain"
    source: str = ""
    revision: int = 0           # store revision of its last write: the newest split of a name wins
    create_revision: int = 0    # store revision of its first write


@dataclass(frozen=True, slots=True)
class IntentionSource:
    """One source of a service-intentions entry: a service name or "*", and "allow" or "deny"."""

    name: str
    action: str


@dataclass(frozen=True, slots=True)
class Intention:
    """Consul's service-intentions config entry: who may reach the service `name`."""

    name: str
    sources: tuple[IntentionSource, ...]
    source: str = ""
    revision: int = 0           # store revision of its last write (last write wins)
    create_revision: int = 0    # store revision of its first write


@dataclass(frozen=True, slots=True)
class ZoneRecord:
    """A record from an RFC 1035 master file, rdata already in wire form."""

    name: str          # lower-case, fully qualified
    rtype: int
    ttl: int
    rdata: bytes


@dataclass(frozen=True, slots=True)
class Zone:
    """An authoritative zone from a *.zone file."""

    origin: str
    records: tuple[ZoneRecord, ...]
    source: str = ""


@dataclass(frozen=True, slots=True)
class PreparedQuery:
    """A Consul prepared query (`/v1/query`), as stored. Strings may hold ${...} when `template`."""

    id: str
    name: str = ""                    # lower-case; a template's name is the prefix it matches
    service: str = ""
    tags: tuple[str, ...] = ()        # "!tag" excludes
    only_passing: bool = False
    nearest_n: int = 0                # the first N [[peer]] entries, in config order
    datacenters: tuple[str, ...] = ()
    node_meta: Meta = ()
    service_meta: Meta = ()
    ttl: float | None = None          # DNS.TTL; None: the service's TTL
    template: bool = False            # Template.Type = "name_prefix_match"
    regexp: str = ""
    remove_empty_tags: bool = False
    create_index: int = 0
    modify_index: int = 0


ServiceKey = tuple[str, str]  # (datacenter, lower-case service name)
NodeKey = tuple[str, str]     # (datacenter, lower-case node name)


@dataclass(frozen=True, slots=True)
class SourceState:
    """Everything one source currently contributes to the catalog."""

    services: dict[ServiceKey, tuple[Instance, ...]] = field(default_factory=dict)
    nodes: dict[NodeKey, Node] = field(default_factory=dict)
    splits: dict[str, Split] = field(default_factory=dict)
    zones: dict[str, Zone] = field(default_factory=dict)
    intentions: dict[str, Intention] = field(default_factory=dict)
    queries: dict[str, PreparedQuery] = field(default_factory=dict)  # by ID
