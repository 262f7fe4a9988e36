"""Who is asking: the client class an answer may depend on, computed from the source address.

Replies are cached per class, so a class holds only what answers differ by:
whether recursion is offered, and (DESIGN §10) the client's zone and the
services registered at its address, which an `identify` collaborator works
out from the catalog (catalog.client_class.Classifier) when one is given.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

from ..catalog.client_class import ClientClass as Identified, Locality, classify
from ..catalog.intentions import decisive_identities, named_sources
from ..catalog.snapshot import Snapshot
from ..catalog.validate import source_address


@dataclass(frozen=True, slots=True)
class ClientClass:
    recursion: bool = False                # outside names may be forwarded for it (RA set)
    zone: str = ""                         # the client's zone, for same-zone answers
    services: frozenset[str] = frozenset()  # the services at the client's address, for intention views


class Identity(Protocol):
    zone: str
    services: frozenset[str]


Identify = Callable[[Snapshot, str], Identity]   # (catalog, source IP) -> its zone and services


class Views:
    """An `identify` for the answers that depend on who asks (DESIGN §10): the client's zone when answers
    prefer it, and when intentions are enforced only the identities that can change a decision
    (catalog.intentions.decisive_identities), so the classes stay few: zones x services intentions name."""

    def __init__(self, *, localities: Sequence[Locality], zones: bool, intentions: bool):
        self.localities = tuple(localities)
        self.zones, self.intentions = zones, intentions
        self._entries: Mapping | None = None
        self._named: frozenset[str] = frozenset()

    def __call__(self, snap: Snapshot, ip: str) -> Identified:
        who = classify(snap, ip, localities=self.localities)
        services = frozenset()
        if self.intentions and who.services:
            if snap.intentions is not self._entries:
                self._entries, self._named = snap.intentions, named_sources(snap.intentions)
            services = decisive_identities(who.services, self._named)
        return Identified(who.zone if self.zones else "", services)


class RecursionPolicy:
    """Which clients may have non-catalog names forwarded for them."""

    def __init__(self, cidrs: tuple[str, ...]):
        self._nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def allows(self, ip: str) -> bool:
        addr = source_address(ip)
        return addr is not None and any(addr in n for n in self._nets)


class Classifier:
    def __init__(self, recursion: RecursionPolicy, *, identify: Identify | None = None):
        self.recursion = recursion
        self.identify = identify

    @property
    def reads_catalog(self) -> bool:
        """True when a class can change with the catalog (then classes are worked out again per snapshot)."""
        return self.identify is not None

    def classify(self, snap: Snapshot, ip: str) -> ClientClass:
        if self.identify is None:
            return ClientClass(self.recursion.allows(ip))
        who = self.identify(snap, ip)
        return ClientClass(self.recursion.allows(ip), who.zone, who.services)
