"""Who is asking: the client class an answer may depend on, computed from the source address.

Replies are cached per class, so a class holds only what answers differ by.
Today that is whether recursion is offered; a client's zone and identity
(DESIGN §10) come from an `identify` collaborator when one is given.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True, slots=True)
class ClientClass:
    recursion: bool = False           # outside names may be forwarded for it (RA set)
    zone: str = ""                    # the client's zone, for same-zone answers
    identity: tuple[str, ...] = ()    # the services at the client's address, for intention views


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


Identify = Callable[[str], tuple[str, tuple[str, ...]]]   # source IP -> (zone, identity)


class Classifier:
    def __init__(self, recursion: RecursionPolicy, *, identify: Identify | None = None):
        self.recursion = recursion
        self.identify = identify

    def classify(self, ip: str) -> ClientClass:
        zone, identity = self.identify(ip) if self.identify is not None else ("", ())
        return ClientClass(self.recursion.allows(ip), zone, identity)
