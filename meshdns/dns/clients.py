"""Who is asking: the client class an answer may depend on, computed from the source address.

Replies are cached per class, so a class holds only what answers differ by:
whether recursion is offered, and (DESIGN §10) the client's zone and the
services registered at its address, which an `identify` collaborator works
out from the catalog (catalog.client_class.Classifier) when one is given.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Protocol

from ..catalog.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class ClientClass:
    recursion: bool = False                # outside names may be forwarded for it (RA set)
    zone: str = ""                         # the client's zone, for same-zone answers
    services: frozenset[str] = frozenset()  # the services at the client's address, for intention views


class Identity(Protocol):
    zone: str
    services: frozenset[str]


Identify = Callable[[Snapshot, str], Identity]   # (catalog, source IP) -> its zone and services


class RecursionPolicy:
    """Which clients may have non-catalog names forwarded for them."""

    def __init__(self, cidrs: tuple[str, ...]):
        self._nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def allows(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in n for n in self._nets)


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
