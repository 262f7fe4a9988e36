"""Catalog rules every reader shares: which instances are served, and what each split target gets.

DNS answers and the API's reports both come from these functions, so what the
API says is served is what DNS serves.
"""
from __future__ import annotations

from dataclasses import dataclass

from .model import Health, Instance, Split, SplitTarget
from .snapshot import Snapshot


def healthy(instances: tuple[Instance, ...], *, only_passing: bool, tag: str = "") -> list[Instance]:
    """Passing (and warning unless only_passing) instances, with `tag` (lower-case) when given."""
    limit = Health.PASSING if only_passing else Health.WARNING
    return [i for i in tagged(instances, tag) if i.health <= limit]


def tagged(instances: tuple[Instance, ...], tag: str) -> tuple[Instance, ...] | list[Instance]:
    """The instances carrying `tag` (lower-case; tags compare case-insensitively); all when tag is ""."""
    return [i for i in instances if any(t.lower() == tag for t in i.tags)] if tag else instances


@dataclass(frozen=True, slots=True)
class SplitSide:
    """One split target as served now: its instances and its share of the answers (0-1)."""

    target: SplitTarget
    instances: tuple[Instance, ...]
    share: float


def split_sides(split: Split, snap: Snapshot, *, only_passing: bool) -> tuple[SplitSide, ...]:
    """The targets a split answers with now and their shares; () when it answers NXDOMAIN.

    A target without a healthy instance drops out and its share goes to the others.
    With nothing healthy and `on_all_unhealthy = "all"`, every target serves every
    instance of its service and tag that is not in maintenance (fail open). A target may
    name another datacenter (a peer's imported copy).
    """
    dc = snap.datacenter
    targets = [t for t in split.targets if t.weight > 0]
    sides = [(t, healthy(snap.services.get((t.datacenter or dc, t.service), ()), only_passing=only_passing,
                         tag=t.tag))
             for t in targets]
    sides = [(t, insts) for t, insts in sides if insts]
    if not sides and split.on_all_unhealthy == "all":
        sides = [(t, [i for i in tagged(snap.services.get((t.datacenter or dc, t.service), ()), t.tag)
                      if i.health is not Health.MAINTENANCE]) for t in targets]
        sides = [(t, insts) for t, insts in sides if insts]
    total = sum(t.weight for t, _ in sides)
    return tuple(SplitSide(t, tuple(insts), t.weight / total) for t, insts in sides)

