"""Zones: where an instance runs, and which instances a client in a zone is served.

Pure rules over a snapshot, shared by every reader, so DNS and the API agree on
what "same zone" means.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .model import Instance, Meta, Node
from .snapshot import Snapshot

ZONE_KEY = "zone"


def meta_zone(meta: Meta) -> str:
    """The `zone` entry of a meta tuple; "" when there is none."""
    for key, value in meta:
        if key == ZONE_KEY:
            return value
    return ""


def node_zone(node: Node | None) -> str:
    return meta_zone(node.meta) if node is not None else ""


def instance_zone(snap: Snapshot, inst: Instance) -> str:
    """The instance's zone: its own meta `zone`, else its node's meta `zone`, else "".

    Kubernetes puts the EndpointSlice endpoint's zone in the instance meta and the
    Node's topology.kubernetes.io/zone label in the node meta, so this one rule covers
    pods, registrations and zone files alike.
    """
    own = meta_zone(inst.meta)
    if own or not inst.node:
        return own
    return node_zone(snap.nodes.get((inst.datacenter, inst.node.lower())))


SAME_ZONE_PRIORITY = 1
OTHER_ZONE_PRIORITY = 2


@dataclass(frozen=True, slots=True)
class ZoneChoice:
    """What a client in a zone is served from a list of instances.

    addresses: the instances for A/AAAA answers.
    priorities: the SRV priority of each input instance, in input order (SRV carries them all).
    same_zone: True when the answer prefers the client's zone, False when it could not
    (too few instances there), None when the client has no zone (nothing to count).
    """

    addresses: tuple[Instance, ...]
    priorities: tuple[int, ...]
    same_zone: bool | None


def same_zone(snap: Snapshot, instances: Sequence[Instance], client_zone: str, *, minimum: int) -> ZoneChoice:
    """Prefer the client's zone among `instances` (those the answer would serve: already healthy).

    With at least `minimum` of them in `client_zone`, A/AAAA get only those and SRV gives
    them priority 1 and the others priority 2. With fewer (the zone's instances failed),
    the answer spills over: every instance, all at priority 1, so a small remainder in
    the zone is not sent every client's traffic.
    """
    instances = tuple(instances)
    if not client_zone:
        return ZoneChoice(instances, (SAME_ZONE_PRIORITY,) * len(instances), None)
    local = tuple(instance_zone(snap, i) == client_zone for i in instances)
    count = sum(local)
    if count and count >= minimum:
        return ZoneChoice(tuple(i for i, here in zip(instances, local) if here),
                          tuple(SAME_ZONE_PRIORITY if here else OTHER_ZONE_PRIORITY for here in local), True)
    return ZoneChoice(instances, (SAME_ZONE_PRIORITY,) * len(instances), False)
