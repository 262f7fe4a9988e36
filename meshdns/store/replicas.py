"""This replica among the others: membership, which checks it owns, and whether it leads.

On etcd each replica holds a member key on its own lease; every check is
owned by one live member (rendezvous hashing, so a leaver's share is all that
moves) and one member is elected on its membership lease. On SQLite the one
process is the only member and the leader, and writes neither key: revisions
count only real writes.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Sequence

from .election import Election
from .kv import Compare, StoreError
from .membership import Membership, MembersView, owner
from .records import Records

log = logging.getLogger("meshdns.store.replicas")

Listener = Callable[[], None]


class SingleReplica:
    """One server with its own store: every check is its own, it is the leader and the only peer."""

    clustered = False
    is_leader = True

    def __init__(self, replica_id: str):
        self.id = replica_id
        self.address = ""

    def owns(self, name: str) -> bool:
        return True

    @property
    def leader_address(self) -> str:
        return self.address

    def peers(self) -> list[str]:
        return [self.address]

    def fence(self) -> Sequence[Compare]:
        return ()

    def on_members(self, listener: Listener) -> None:
        """Members never change."""

    def on_leader(self, listener: Listener) -> None:
        """Leadership never changes."""

    async def run(self) -> None:
        return None

    async def close(self) -> None:
        return None


class ClusterReplicas:
    """Membership, the live members and the election over the shared records' reflector."""

    clustered = True

    def __init__(self, records: Records, replica_id: str, *, ttl: int, retry: float = 1.0):
        self.membership = Membership(records.kv, records.prefix, replica_id, "", ttl=ttl, retry=retry)
        self.view = MembersView(records.prefix)
        self.election = Election(self.membership, records.prefix, retry=retry)
        self._member_listeners: list[Listener] = []
        self._leader_listeners: list[Listener] = []
        self._leading = False
        records.on_batch(self._apply)

    @property
    def id(self) -> str:
        return self.membership.id

    @property
    def address(self) -> str:
        return self.membership.address

    @address.setter
    def address(self, value: str) -> None:
        self.membership.address = value

    def owns(self, name: str) -> bool:
        """Whether this replica runs the check `name`, by the live members this replica has seen."""
        return owner(name, self.view.members) == self.id

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    @property
    def leader_address(self) -> str:
        return self.election.leader_address or ""

    def peers(self) -> list[str]:
        return sorted(m.address for m in self.view.members.values())

    def fence(self) -> Sequence[Compare] | None:
        """A write of this incarnation holds only while its member key does; None before it joined."""
        return [self.membership.fence()] if self.membership.joined.is_set() else None

    def on_members(self, listener: Listener) -> None:
        self._member_listeners.append(listener)

    def on_leader(self, listener: Listener) -> None:
        self._leader_listeners.append(listener)

    def _apply(self, batch) -> None:
        self.view.apply(batch)
        self.election.apply(batch)
        if self.view.changed.is_set():
            self.view.changed.clear()
            log.info("members: %s", ", ".join(sorted(f"{m.id} ({m.address})" for m in self.view.members.values()))
                     or "none")
            _notify(self._member_listeners)
        leading = self.is_leader
        if self.election.changed.is_set() or leading != self._leading:
            self.election.changed.clear()
            self._leading = leading
            _notify(self._leader_listeners)

    async def run(self) -> None:
        await asyncio.gather(self.membership.run(), self.election.run())

    async def close(self) -> None:
        """Leave at once (the lease is revoked): the others take over without waiting for the TTL."""
        try:
            await self.membership.leave()
        except StoreError as exc:
            log.warning("leaving the members failed (they notice after the TTL): %s", exc)


def _notify(listeners: list[Listener]) -> None:
    for listener in listeners:
        try:
            listener()
        except Exception:
            log.exception("replica listener failed")
