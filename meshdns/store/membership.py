"""Which replicas are alive, and which of them owns a given check.

Each replica holds `<prefix>members/<replica-id>` = {"address": ...} on its
own lease; a replica that stops refreshing it disappears after the TTL. The
live set is read from the reflector's batches (`MembersView.apply`), so every
replica sees the same members at the same revision, and `owner` (rendezvous
hashing) then gives every check exactly one owner; when a member leaves only
its share moves.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from .kv import DELETE, KV, Batch, Compare, Delete, Put, StoreError
from .leases import keep_alive

log = logging.getLogger("meshdns.store.membership")


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    address: str
    create_revision: int


def owner(check_id: str, members: Iterable[str]) -> str | None:
    """The member with the highest hash of (member, check): stable, and only a leaver's share moves."""
    best, best_score = None, b""
    for member in members:
        score = hashlib.blake2b(f"{member}\0{check_id}".encode(), digest_size=16).digest()
        if best is None or score > best_score:
            best, best_score = member, score
    return best


class MembersView:
    """The live members, fed with the reflector's batches of the whole prefix."""

    def __init__(self, prefix: bytes):
        self._dir = prefix + b"members/"
        self.members: dict[str, Member] = {}
        self.changed = asyncio.Event()  # set on every change; a waiter clears it

    def apply(self, batch: Batch) -> None:
        for event in batch.events:
            key = event.kv.key
            if not key.startswith(self._dir):
                continue
            member_id = key[len(self._dir):].decode(errors="replace")
            if event.type == DELETE:
                self.members.pop(member_id, None)
            else:
                try:
                    address = json.loads(event.kv.value)["address"]
                except (ValueError, KeyError, TypeError):
                    log.error("member key %r holds no address; ignored", key)
                    continue
                self.members[member_id] = Member(member_id, address, event.kv.create_revision)
            self.changed.set()


class Membership:
    """This replica's member key on a lease refreshed by its own task; rejoins after losing it.

    Each join creates the key afresh, so its create_revision identifies this
    incarnation: `fence()` lets a write succeed only while it is still ours.
    """

    def __init__(self, kv: KV, prefix: bytes, replica_id: str, address: str, *, ttl: int = 10,
                 retry: float = 1.0, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.kv = kv
        self.id = replica_id
        self.address = address
        self.key = prefix + b"members/" + replica_id.encode()
        self.ttl = ttl
        self._retry = retry
        self._sleep = sleep
        self.lease = 0
        self.create_revision = 0
        self.joined = asyncio.Event()

    def fence(self) -> Compare:
        """A txn compare that holds only while this incarnation's member key exists."""
        return Compare(self.key, "create", "==", self.create_revision)

    async def run(self) -> None:
        """Join and stay joined until cancelled."""
        while True:
            try:
                await self._join()
                await keep_alive(self.kv, self.lease, self.ttl, sleep=self._sleep)
            except StoreError as exc:
                log.warning("%s: joining as %s failed: %s", self.kv, self.id, exc)
            self.joined.clear()
            self.lease = self.create_revision = 0
            await self._sleep(self._retry)

    async def _join(self) -> None:
        lease = await self.kv.grant(self.ttl)
        value = json.dumps({"address": self.address}).encode()
        while True:  # a key left by an earlier incarnation is removed, then ours created
            created, revision = await self.kv.txn([Compare(self.key, "create", "==", 0)],
                                                  [Put(self.key, value, lease)], [Delete(self.key)])
            if created:
                break
        self.lease, self.create_revision = lease, revision
        self.joined.set()
        log.info("%s: joined as %s (%s) at revision %d", self.kv, self.id, self.address, revision)

    async def leave(self) -> None:
        """Revoke the lease: the member key goes at once instead of after the TTL."""
        lease, self.lease = self.lease, 0
        self.joined.clear()
        if lease:
            await self.kv.revoke(lease)
