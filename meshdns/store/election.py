"""One leader among the replicas, on their membership leases.

`<prefix>leader` = {"id", "address"} is created only if absent, with the
campaigner's membership lease: its holder is the leader until the lease ends
(leave, crash, partition longer than the TTL), which deletes the key; every
replica sees the deletion through its reflector and campaigns. No key is
written while a leader lives, so a quiet cluster's revision stays still.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Awaitable, Callable

from .kv import DELETE, Batch, Compare, Put, StoreError
from .membership import Membership

log = logging.getLogger("meshdns.store.election")


class Election:
    def __init__(self, membership: Membership, prefix: bytes, *, retry: float = 1.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.membership = membership
        self.kv = membership.kv
        self.key = prefix + b"leader"
        self._retry = retry
        self._sleep = sleep
        self.leader_id: str | None = None
        self.leader_address: str | None = None
        self._leader_lease = 0
        self._seen = False  # the leader key's state is known (the first batch was applied)
        self._wakeup = asyncio.Event()
        self.changed = asyncio.Event()  # set when the leader changes; a waiter clears it

    @property
    def is_leader(self) -> bool:
        return (self.leader_id == self.membership.id and self.membership.lease != 0
                and self._leader_lease == self.membership.lease)

    def fence(self) -> Compare:
        """A txn compare that holds only while this replica's lease holds the leadership."""
        return Compare(self.key, "lease", "==", self.membership.lease)

    def apply(self, batch: Batch) -> None:
        """Feed with the reflector's batches of the whole prefix."""
        first, self._seen = not self._seen, True
        for event in batch.events:
            if event.kv.key != self.key:
                continue
            if event.type == DELETE:
                self._set(None, None, 0)
            else:
                try:
                    value = json.loads(event.kv.value)
                    self._set(value["id"], value["address"], event.kv.lease)
                except (ValueError, KeyError, TypeError):
                    log.error("leader key %r is not {id, address}; ignored", self.key)
        if first or self.leader_id is None:
            self._wakeup.set()

    def _set(self, leader_id: str | None, address: str | None, lease: int) -> None:
        if (leader_id, address, lease) != (self.leader_id, self.leader_address, self._leader_lease):
            self.leader_id, self.leader_address, self._leader_lease = leader_id, address, lease
            self.changed.set()
            log.info("leader: %s", address or "none")

    async def run(self) -> None:
        """Campaign whenever there is no leader, until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.leader_id is not None:
                continue
            await self.membership.joined.wait()
            value = json.dumps({"id": self.membership.id, "address": self.membership.address}).encode()
            try:
                await self.kv.txn([Compare(self.key, "create", "==", 0)],
                                  [Put(self.key, value, self.membership.lease)])
            except StoreError as exc:  # unreachable, or the lease just expired: try again
                log.warning("%s: campaign failed: %s", self.kv, exc)
                await self._sleep(self._retry)
                self._wakeup.set()
