"""Membership on leases, check ownership by rendezvous hashing, and the election, on SQLite and etcd.

Replicas here are sets of tasks in one process, each with its own store
client on etcd (a crash is: its tasks stop and its client closes, so its lease
is no longer refreshed). TTLs are 2 s; every wait is bounded generously.
"""
from __future__ import annotations

import asyncio
import random

from etcd_cluster import eventually, etcd, prefix, stores  # noqa: F401 (fixtures)
from meshdns.store import Put
from meshdns.store.election import Election
from meshdns.store.membership import Membership, MembersView, owner
from meshdns.sources.kubernetes.watch import Backoff
from meshdns.store.reflector import Reflector

TTL = 2
CHECKS = [f"service:web-{i}:check" for i in range(600)]


def test_owner_is_stable_and_a_leaver_moves_only_its_share():
    rng = random.Random(7)
    members = ["a", "b", "c", "d"]
    before = {check: owner(check, members) for check in CHECKS}
    shuffled = members[:]
    rng.shuffle(shuffled)
    assert {check: owner(check, shuffled) for check in CHECKS} == before  # order of members does not matter
    assert all(list(before.values()).count(m) > len(CHECKS) / 8 for m in members)  # everyone gets a share
    after = {check: owner(check, ["a", "b", "d"]) for check in CHECKS}
    moved = {check for check in CHECKS if after[check] != before[check]}
    assert moved == {check for check in CHECKS if before[check] == "c"}
    assert {after[check] for check in moved} == {"a", "b", "d"}  # spread over the survivors
    joined = {check: owner(check, members + ["e"]) for check in CHECKS}
    assert {joined[c] for c in CHECKS if joined[c] != before[c]} == {"e"}  # a joiner only takes
    assert owner("x", []) is None


class Replica:
    """One meshdns replica's store duties: membership, a reflector of the prefix, the members view, the election."""

    def __init__(self, kv, prefix: bytes, name: str, address: str):
        self.kv = kv
        self.membership = Membership(kv, prefix, name, address, ttl=TTL, retry=0.2)
        self.view = MembersView(prefix)
        self.election = Election(self.membership, prefix, retry=0.2)
        self.reflector = Reflector(kv, prefix, self._apply, backoff=Backoff(initial=0.1, cap=1.0, rng=random.Random(1)))
        self.tasks: list[asyncio.Task] = []

    def _apply(self, batch) -> None:
        self.view.apply(batch)
        self.election.apply(batch)

    def start(self) -> "Replica":
        self.tasks = [asyncio.create_task(part.run()) for part in (self.membership, self.reflector, self.election)]
        return self

    def owners(self) -> dict[str, str]:
        return {check: owner(check, self.view.members) for check in CHECKS}

    async def crash(self) -> None:
        """Stop every task without leaving: the lease lapses after its TTL."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def start_replicas(stores, prefix, n: int = 3) -> list[Replica]:
    return [Replica(stores.make(), prefix, f"r{i}", f"127.0.0.1:{18500 + i}").start() for i in range(n)]


async def test_a_dead_members_checks_move_and_only_those(stores, prefix):
    replicas = await start_replicas(stores, prefix)
    try:
        await eventually(lambda: all(len(r.view.members) == 3 for r in replicas), what="3 members seen by all")
        assert {m.address for m in replicas[0].view.members.values()} == {"127.0.0.1:18500", "127.0.0.1:18501",
                                                                          "127.0.0.1:18502"}
        before = replicas[0].owners()
        assert all(r.owners() == before for r in replicas)

        await replicas[2].crash()
        live = replicas[:2]
        await eventually(lambda: all(set(r.view.members) == {"r0", "r1"} for r in live), 10 * TTL,
                         what="the dead member's lease expired")
        after = live[0].owners()
        assert live[1].owners() == after
        moved = {check for check in CHECKS if after[check] != before[check]}
        assert moved == {check for check in CHECKS if before[check] == "r2"} and moved
    finally:
        for replica in replicas:
            await replica.crash()


async def test_the_leader_dies_and_another_replica_leads_within_the_lease(stores, prefix):
    replicas = await start_replicas(stores, prefix)
    try:
        await eventually(lambda: all(r.election.leader_address for r in replicas), what="a leader")
        first = replicas[0].election.leader_id
        assert all(r.election.leader_id == first for r in replicas)
        assert [r.election.is_leader for r in replicas].count(True) == 1
        quiet = replicas[0].reflector.revision
        await asyncio.sleep(TTL)  # keepalives only: a quiet cluster's revision stands still
        assert all(r.reflector.revision == quiet for r in replicas)

        dead = next(r for r in replicas if r.election.is_leader)
        await dead.crash()
        live = [r for r in replicas if r is not dead]
        await eventually(lambda: all(r.election.leader_id not in (None, first) for r in live), 10 * TTL,
                         what="a new leader after the lease expired")
        second = live[0].election.leader_id
        assert live[1].election.leader_id == second
        assert [r.election.is_leader for r in live].count(True) == 1
        leader = next(r for r in live if r.election.is_leader)
        assert leader.election.leader_address == leader.membership.address

        await leader.membership.leave()  # a clean exit hands over at once, without waiting for the TTL
        leader.tasks[0].cancel()
        other = next(r for r in live if r is not leader)
        await eventually(lambda: other.election.is_leader, 10 * TTL, what="the remaining replica leads")
    finally:
        for replica in replicas:
            await replica.crash()


async def test_a_replica_that_lost_its_lease_rejoins_and_the_old_fence_fails(stores, prefix):
    kv = stores.make()
    replica = Replica(kv, prefix, "r0", "127.0.0.1:18500").start()
    try:
        await eventually(lambda: replica.membership.joined.is_set() and replica.election.is_leader,
                         what="joined and leading")
        old_fence, old_lease = replica.membership.fence(), replica.membership.lease
        ok, _ = await kv.txn([old_fence, replica.election.fence()], [Put(prefix + b"status", b"passing")])
        assert ok
        await kv.revoke(old_lease)  # as if the store had expired it during a long partition
        await eventually(lambda: replica.membership.lease not in (0, old_lease) and replica.election.is_leader,
                         10 * TTL, what="rejoined with a new lease and leading again")
        ok, _ = await kv.txn([old_fence], [Put(prefix + b"status", b"zombie")])
        assert not ok  # a write fenced by the old incarnation is refused
        ok, _ = await kv.txn([replica.membership.fence(), replica.election.fence()],
                             [Put(prefix + b"status", b"critical")])
        assert ok
        assert "r0" in replica.view.members
    finally:
        await replica.crash()
