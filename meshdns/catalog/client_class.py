"""Who is asking: a query's source IP -> its zone and service identities (its client class).

The catalog knows the address of every instance and node; a client at one of those
addresses takes that instance's zone and the services registered there. Other clients
get the zone of the first [[locality]] CIDR containing them, and no identity.
Answers that depend on who asks (same-zone preference, intention views) are keyed by
this class, so there are few of them however many clients there are.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Sequence

from .locality import instance_zone, node_zone
from .snapshot import Snapshot
from .validate import source_address

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ClientClass:
    zone: str                  # "" when unknown
    services: frozenset[str]   # lower-case service names registered at the client's address


NOBODY = ClientClass("", frozenset())


@dataclass(frozen=True, slots=True)
class Locality:
    """One [[locality]] entry: clients in `network` are in `zone`."""

    network: IPNetwork
    zone: str


def parse_localities(entries: Iterable[tuple[str, str]]) -> tuple[Locality, ...]:
    """(cidr, zone) pairs, as config.py validated them, in file order."""
    return tuple(Locality(ipaddress.ip_network(cidr, strict=False), zone) for cidr, zone in entries)


def classify(snap: Snapshot, source_ip: str, *, localities: Sequence[Locality]) -> ClientClass:
    """The client class of `source_ip` in this snapshot (our datacenter's instances and nodes).

    zone: the first zone among the instances at that address (in service name order),
    else among the nodes there, else the first [[locality]] containing it.
    """
    ip = source_address(source_ip)
    if ip is None:
        return NOBODY
    key, dc = str(ip), snap.datacenter
    services: set[str] = set()
    zone = ""
    for skey in sorted(k for k in snap.ip_services.get(key, ()) if k[0] == dc):
        for inst in snap.services.get(skey, ()):
            if snap.instance_address(inst) == key:
                services.add(skey[1])
                zone = zone or instance_zone(snap, inst)
    for nkey in sorted(snap.ip_nodes.get(key, ())):
        if not zone and nkey[0] == dc:
            zone = node_zone(snap.nodes.get(nkey))
    if not zone:
        zone = next((loc.zone for loc in localities if ip in loc.network), "")
    return ClientClass(zone, frozenset(services)) if zone or services else NOBODY


class Classifier:
    """classify() with a bounded memo per snapshot: O(1) per query after a source's first.

    The memo is dropped when the snapshot changes (a registration can give an address an
    identity); when full, the oldest source is forgotten first.
    """

    def __init__(self, *, localities: Sequence[Locality], max_entries: int = 4096):
        self.localities = tuple(localities)
        self.max_entries = max(1, max_entries)
        self._snap: Snapshot | None = None
        self._memo: dict[str, ClientClass] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memo)

    def __call__(self, snap: Snapshot, source_ip: str) -> ClientClass:
        if snap is not self._snap:
            self._snap = snap
            self._memo = {}
        found = self._memo.get(source_ip)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        found = classify(snap, source_ip, localities=self.localities)
        if len(self._memo) >= self.max_entries:
            del self._memo[next(iter(self._memo))]
        self._memo[source_ip] = found
        return found
