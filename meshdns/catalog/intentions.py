"""Intentions: may a client, known by its service identities, reach a destination service?

Consul's L4 rule for one identity: the entry for the destination decides; within it
the most specific source wins (an exact service name over "*", whatever the order of
the list); no entry, or no source that matches, gives the default.

A DNS client is an address, and one address can carry several services (a VM running
web and batch). Consul decides per identity, each connection presenting one, so a
name is answered when ANY identity at the address may reach it: hiding it would break
a service Consul lets connect, and the connection itself is still checked by the
proxy. An address with no identity is the source "*".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Mapping

from .model import Intention

WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class Decision:
    """allowed, and the source that decided (the identity, or "*" for an address without one)."""

    allowed: bool
    source: str


def _action(entry: Intention | None, identity: str, default: str) -> str:
    """Consul's decision for one identity: exact source, else "*", else the default."""
    if entry is None:
        return default
    wildcard = None
    for src in entry.sources:
        if src.name == identity:
            return src.action
        if src.name == WILDCARD:
            wildcard = src.action
    return wildcard or default


def intention_decision(entries: Mapping[str, Intention], source_services: AbstractSet[str], destination: str,
                       *, default: str) -> Decision:
    """The decision for a client with these service identities (lower-case names; none: "*").

    `default` is "allow" or "deny". Allowed when any identity is allowed; a denial names
    the first identity in name order.
    """
    entry = entries.get(destination)
    identities = sorted(source_services) or [WILDCARD]
    for identity in identities:
        if _action(entry, identity, default) == "allow":
            return Decision(True, identity)
    return Decision(False, identities[0])


def intention_allows(entries: Mapping[str, Intention], source_services: AbstractSet[str], destination: str,
                     *, default: str) -> bool:
    return intention_decision(entries, source_services, destination, default=default).allowed


def named_sources(entries: Mapping[str, Intention]) -> frozenset[str]:
    """Every service some entry names as a source (not "*")."""
    return frozenset(s.name for e in entries.values() for s in e.sources if s.name != WILDCARD)


def decisive_identities(source_services: AbstractSet[str], named: AbstractSet[str]) -> frozenset[str]:
    """The identities that can change a decision: those in `named` (named_sources), plus "*" standing
    for all the others. intention_decision allows exactly when it allows the full set, so replies
    cached per (zone, these) stay few: zones x the services intentions mention."""
    kept = frozenset(s for s in source_services if s in named)
    return kept | {WILDCARD} if len(kept) < len(source_services) else kept
