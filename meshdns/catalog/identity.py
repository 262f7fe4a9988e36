"""Who a DNS client is: the services (and nodes) the catalog has at its source address.

One definition for everything that depends on the asking client (the topology
view now; same-zone answers and intention views later). A client that is no
catalog instance is known by its network: its /24 (IPv6: its /64). Pure
lookups in the snapshot's address indexes; `Identities` adds a cache per
address that lives until those indexes change.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .snapshot import Snapshot
from .validate import source_address


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    address: str                    # canonical text (IPv4-mapped IPv6 as IPv4, no zone index)
    network: str                    # "a.b.c.0/24", "x:x:x:x::/64"; the address itself if it is none
    services: tuple[str, ...] = ()  # distinct service names of the instances at the address, sorted
    nodes: tuple[str, ...] = ()     # names of the nodes at the address, sorted

    @property
    def names(self) -> tuple[str, ...]:
        """What the client is called: its services, else its network."""
        return self.services or (self.network,)


def canonical(address: str) -> str:
    """The address as the catalog writes it (validate.source_address); a string that is no address stays."""
    ip = source_address(address)
    return address if ip is None else str(ip)


def network_of(address: str) -> str:
    """The /24 (IPv6: /64) an address is grouped in; a string that is no address stays as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))


def identify(snap: Snapshot, address: str) -> ClientIdentity:
    ip = canonical(address)
    services = sorted({name for _, name in snap.ip_services.get(ip, ())})
    nodes = sorted({snap.nodes[key].name for key in snap.ip_nodes.get(ip, ()) if key in snap.nodes})
    return ClientIdentity(ip, network_of(ip), tuple(services), tuple(nodes))


class Identities:
    """identify() with a cache per source address, dropped when the catalog's address indexes change."""

    def __init__(self, *, max_entries: int = 65536):
        self.max_entries = max_entries
        self._cache: dict[str, ClientIdentity] = {}
        self._indexes: tuple = (None, None)

    def __call__(self, snap: Snapshot, address: str) -> ClientIdentity:
        if self._indexes[0] is not snap.ip_services or self._indexes[1] is not snap.ip_nodes:
            self._cache.clear()
            self._indexes = (snap.ip_services, snap.ip_nodes)
        found = self._cache.get(address)
        if found is None:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            found = self._cache[address] = identify(snap, address)
        return found
