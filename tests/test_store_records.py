"""The shared records over both backends: what one replica commits, every replica applies, with one revision.

Each test runs on SQLite and on a real etcd; with etcd each `Records` has a
client of its own (a replica), with SQLite they share the one store.
"""
from __future__ import annotations

import asyncio

from etcd_cluster import eventually, etcd, prefix, stores  # noqa: F401 (fixtures)
from meshdns.store import Compare, Put
from meshdns.store.records import Records, Write, record_key


async def replicas(stores, prefix, n: int = 2) -> list[Records]:
    made = [Records(stores.make(), prefix, timeout=10) for _ in range(n)]
    for records in made:
        await records.start()
    return made


async def close(made: list[Records]) -> None:
    for records in made:
        for task in records._tasks:
            task.cancel()
        await asyncio.gather(*records._tasks, return_exceptions=True)


async def test_a_commit_is_applied_before_it_returns_and_by_every_replica_with_its_revision(stores, prefix):
    a, b = await replicas(stores, prefix)
    heard = []
    b.subscribe(["service"], lambda records: heard.extend(records))
    try:
        revision = await a.commit([Write("service", "agent/web-1", {"Name": "web"}),
                                   Write("check", "agent/web-1:c", {"TTL": "10s"})])
        assert a.load("service") == {"agent/web-1": {"Name": "web"}}          # read-your-writes
        assert a.revision_of("service", "agent/web-1") == a.revision_of("check", "agent/web-1:c")   # one txn
        await eventually(lambda: b.revision >= revision, what="b applied the write")
        assert b.load("service") == a.load("service") and b.load("check") == a.load("check")
        assert b.revision_of("service", "agent/web-1") == a.revision_of("service", "agent/web-1")
        assert [(r.kind, r.key, r.value) for r in heard] == [("service", "agent/web-1", {"Name": "web"})]
        # re-writing an unchanged value with if_changed writes nothing; deleting nothing returns at once
        same = await a.commit([Write("service", "agent/web-1", {"Name": "web"}, if_changed=True),
                               Write("service", "agent/none", None)])
        assert same == revision == a.revision
        gone = await b.commit([Write("service", "agent/web-1", None)])
        assert b.load("service") == {} and gone > revision
        await eventually(lambda: a.load("service") == {}, what="a applied the delete")
        assert [r.value for r in heard] == [{"Name": "web"}, None]
    finally:
        await close([a, b])


async def test_queued_writes_keep_the_latest_value_and_a_broken_fence_drops_them(stores, prefix):
    a, b = await replicas(stores, prefix)
    try:
        for i in range(5):
            a.commit_soon([Write("check-status", "c1", {"Status": "passing", "Output": str(i)})])
        await a.flush()
        await eventually(lambda: b.value_of("check-status", "c1") == {"Status": "passing", "Output": "4"},
                         what="the latest queued value")
        before = a.revision
        member = record_key(prefix, "member", "x")     # a fence on a key that does not hold what it expects
        a.commit_soon([Write("check-status", "c1", {"Status": "critical", "Output": "stale"})],
                      fence=[Compare(member, "create", "==", 12345)])
        await a.flush()
        assert a.value_of("check-status", "c1")["Output"] == "4" and a.revision == before
    finally:
        await close([a, b])


async def test_catching_up_with_the_store_passes_writes_under_other_prefixes(stores, prefix):
    (a,) = await replicas(stores, prefix, 1)
    other = stores.make()
    try:
        await a.commit([Write("service", "s", {"n": 1})])
        _, elsewhere = await other.txn((), [Put(b"/elsewhere/k", b"v")])
        assert a.revision < elsewhere          # nothing under a's prefix changed: its watch says nothing
        assert await a.catch_up(timeout=10)    # ... until asked for its progress
        assert a.revision >= elsewhere
        assert a.load("service") == {"s": {"n": 1}}
    finally:
        await close([a])


async def test_concurrent_catch_ups_and_writes_keep_the_watch(stores, prefix):
    """Every API write on a replica catches up first: many at once must not break the watch stream."""
    (a,) = await replicas(stores, prefix, 1)
    try:
        async def writer(k: int) -> None:
            for i in range(20):
                assert await a.catch_up(timeout=10)
                await a.commit([Write("service", f"{k}-{i}", {"n": i})])
        await asyncio.gather(*(writer(k) for k in range(8)))
        assert len(a.load("service")) == 160
        assert a.reflector.reconnects == 0 and a.reflector.relists == 1   # the first list only
    finally:
        await close([a])
