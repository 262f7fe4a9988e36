"""One conformance suite for the store's KV interface, on SQLite and on a real 3-member etcd.

Every assertion is about what etcd v3 does (revisions, create/mod revisions
and versions, txn compares, watch order and batching, compaction, leases), so
the SQLite backend is held to the same behaviour as the real thing.
"""
from __future__ import annotations

import asyncio

import pytest

from etcd_cluster import etcd, prefix, stores  # noqa: F401 (fixtures)
from meshdns.store import (DELETE, MAX_TXN_OPS, PUT, Compacted, Compare, Delete, InvalidRequest, KeyValue, Put)


async def put(kv, key: bytes, value: bytes, lease: int = 0) -> int:
    ok, revision = await kv.txn([], [Put(key, value, lease)])
    assert ok
    return revision


async def get(kv, key: bytes) -> KeyValue | None:
    entries, _ = await kv.list(key)
    return next((e for e in entries if e.key == key), None)


async def next_batch(watch, timeout: float = 20):
    return await asyncio.wait_for(watch.__anext__(), timeout)


async def test_revisions_create_mod_and_version_follow_etcd(stores, prefix):
    kv = stores.make()
    _, start = await kv.list(prefix)
    r1 = await put(kv, prefix + b"a", b"1")
    assert r1 == start + 1
    assert await get(kv, prefix + b"a") == KeyValue(prefix + b"a", b"1", r1, r1, 1, 0)
    r2 = await put(kv, prefix + b"a", b"2")
    assert r2 == r1 + 1
    assert await get(kv, prefix + b"a") == KeyValue(prefix + b"a", b"2", r1, r2, 2, 0)

    ok, r3 = await kv.txn([], [Put(prefix + b"b", b"x"), Put(prefix + b"c", b"y"), Delete(prefix + b"a")])
    assert ok and r3 == r2 + 1  # one revision for the whole transaction
    entries, revision = await kv.list(prefix)
    assert revision == r3
    assert [(e.key, e.create_revision, e.mod_revision) for e in entries] == [
        (prefix + b"b", r3, r3), (prefix + b"c", r3, r3)]

    r4 = await put(kv, prefix + b"a", b"again")  # recreated: a new life, version 1
    assert await get(kv, prefix + b"a") == KeyValue(prefix + b"a", b"again", r4, r4, 1, 0)


async def test_a_transaction_that_changes_nothing_takes_no_revision(stores, prefix):
    kv = stores.make()
    before = await put(kv, prefix + b"a", b"1")
    ok, revision = await kv.txn([Compare(prefix + b"a", "value", "==", b"other")], [Put(prefix + b"a", b"2")])
    assert (ok, revision) == (False, before)
    ok, revision = await kv.txn([], [Delete(prefix + b"missing"), Delete(prefix + b"nothing/", prefix=True)])
    assert (ok, revision) == (True, before)
    assert (await get(kv, prefix + b"a")).value == b"1"


async def test_list_returns_only_the_prefix_in_key_order(stores, prefix):
    kv = stores.make()
    await kv.txn([], [Put(prefix + b"b", b"2"), Put(prefix + b"a", b"1"), Put(prefix + b"a/x", b"3"),
                      Put(prefix[:-1] + b"x", b"outside")])
    entries, _ = await kv.list(prefix)
    assert [e.key for e in entries] == [prefix + b"a", prefix + b"a/x", prefix + b"b"]
    entries, _ = await kv.list(prefix + b"a/")
    assert [e.value for e in entries] == [b"3"]


async def test_txn_compares_value_version_create_mod_and_lease(stores, prefix):
    kv = stores.make()
    key, missing = prefix + b"k", prefix + b"missing"
    r1 = await put(kv, key, b"v1")
    r2 = await put(kv, key, b"v2")

    async def holds(*compare):
        ok, _ = await kv.txn(list(compare), [], [])
        return ok

    assert await holds(Compare(key, "value", "==", b"v2"))
    assert await holds(Compare(key, "value", "<", b"v3"), Compare(key, "value", ">", b"v1"))
    assert not await holds(Compare(key, "value", "!=", b"v2"))
    assert await holds(Compare(key, "version", "==", 2), Compare(key, "create", "==", r1),
                       Compare(key, "mod", "==", r2), Compare(key, "lease", "==", 0))
    assert not await holds(Compare(key, "mod", "<", r2))
    assert not await holds(Compare(key, "value", "==", b"v2"), Compare(key, "version", "==", 1))  # all must hold
    # a missing key: every number is 0, and a value compare never holds, not even "!="
    assert await holds(Compare(missing, "create", "==", 0), Compare(missing, "version", "==", 0),
                       Compare(missing, "mod", "==", 0))
    assert not await holds(Compare(missing, "value", "!=", b"anything"))
    assert not await holds(Compare(missing, "value", "==", b""))


async def test_failed_compares_run_the_failure_branch(stores, prefix):
    kv = stores.make()
    key = prefix + b"leader"
    ok, r1 = await kv.txn([Compare(key, "create", "==", 0)], [Put(key, b"me")], [Put(prefix + b"lost", b"1")])
    assert ok
    ok, r2 = await kv.txn([Compare(key, "create", "==", 0)], [Put(key, b"you")], [Put(prefix + b"lost", b"1")])
    assert not ok and r2 == r1 + 1
    entries, _ = await kv.list(prefix)
    assert [(e.key, e.value) for e in entries] == [(key, b"me"), (prefix + b"lost", b"1")]


async def test_invalid_transactions_are_refused_whole(stores, prefix):
    kv = stores.make()
    _, before = await kv.list(prefix)
    too_many = [Put(prefix + b"%d" % i, b"x") for i in range(MAX_TXN_OPS + 1)]
    with pytest.raises(InvalidRequest):
        await kv.txn([], too_many)
    with pytest.raises(InvalidRequest):
        await kv.txn([], [Put(prefix + b"a", b"1"), Put(prefix + b"a", b"2")])
    with pytest.raises(InvalidRequest):
        await kv.txn([], [Delete(prefix + b"d/", prefix=True), Put(prefix + b"d/x", b"1")])
    with pytest.raises(InvalidRequest):  # an unknown lease fails the whole transaction
        await kv.txn([], [Put(prefix + b"b", b"1"), Put(prefix + b"c", b"1", lease=0x5EED)])
    entries, after = await kv.list(prefix)
    assert entries == [] and after == before
    ok, _ = await kv.txn([], [Put(prefix + b"%d" % i, b"x") for i in range(MAX_TXN_OPS)])
    assert ok


async def test_watch_replays_history_then_follows_one_batch_per_revision(stores, prefix):
    kv = stores.make()
    r1 = await put(kv, prefix + b"a", b"1")
    _, r2 = await kv.txn([], [Put(prefix + b"c", b"3"), Put(prefix + b"b", b"2")])
    await put(kv, prefix[:-1] + b"-elsewhere", b"x")  # outside the prefix: no batch
    _, r3 = await kv.txn([], [Delete(prefix, prefix=True)])
    watch = await kv.watch(prefix, r1)
    try:
        b1, b2, b3 = [await next_batch(watch) for _ in range(3)]
        assert (b1.revision, [(e.type, e.kv.key) for e in b1.events]) == (r1, [(PUT, prefix + b"a")])
        assert (b2.revision, [(e.type, e.kv.key, e.kv.value) for e in b2.events]) == (
            r2, [(PUT, prefix + b"c", b"3"), (PUT, prefix + b"b", b"2")])  # the transaction's order
        assert b3.revision == r3
        assert [(e.type, e.kv.key, e.kv.mod_revision) for e in b3.events] == [
            (DELETE, prefix + k, r3) for k in (b"a", b"b", b"c")]  # a range delete: key order
        r4 = await put(kv, prefix + b"live", b"4")
        b4 = await next_batch(watch)
        assert b4.revision == r4 and b4.events[0].kv == KeyValue(prefix + b"live", b"4", r4, r4, 1, 0)
    finally:
        await watch.aclose()


async def test_watch_from_a_compacted_revision_raises_compacted(stores, prefix):
    kv = stores.make()
    r1 = await put(kv, prefix + b"a", b"1")
    r2 = await put(kv, prefix + b"a", b"2")
    await kv.compact(r2)
    with pytest.raises(Compacted) as raised:
        watch = await kv.watch(prefix, r1)  # etcd says so on the stream, SQLite at once
        try:
            await next_batch(watch)
        finally:
            await watch.aclose()
    assert raised.value.revision == r2
    watch = await kv.watch(prefix, r2)  # the compaction revision itself is kept
    try:
        assert (await next_batch(watch)).revision == r2
    finally:
        await watch.aclose()
    with pytest.raises(Compacted):
        await kv.compact(r2)
    with pytest.raises(InvalidRequest):
        await kv.compact(r2 + 1000)
    assert [e.value for e in (await kv.list(prefix))[0]] == [b"2"]


async def test_an_expired_lease_deletes_its_keys_in_one_revision(stores, prefix):
    kv = stores.make()
    lease = await kv.grant(2)
    other = await kv.grant(60)
    _, r1 = await kv.txn([], [Put(prefix + b"b", b"1", lease), Put(prefix + b"a", b"1", lease),
                              Put(prefix + b"keep", b"1", other)])
    assert (await get(kv, prefix + b"a")).lease == lease
    assert await kv.keepalive(lease) > 0
    watch = await kv.watch(prefix, r1 + 1)
    try:
        batch = await next_batch(watch, timeout=30)  # no more keepalives: the lease ends
        assert [(e.type, e.kv.key) for e in batch.events] == [(DELETE, prefix + b"a"), (DELETE, prefix + b"b")]
        assert await kv.keepalive(lease) == 0
        assert [e.key for e in (await kv.list(prefix))[0]] == [prefix + b"keep"]
        await kv.revoke(other)  # revoke: at once
        batch = await next_batch(watch)
        assert [(e.type, e.kv.key) for e in batch.events] == [(DELETE, prefix + b"keep")]
        await kv.revoke(other)  # twice: no error
    finally:
        await watch.aclose()


async def test_a_kept_alive_lease_outlives_its_ttl(stores, prefix):
    kv = stores.make()
    lease = await kv.grant(2)
    await put(kv, prefix + b"a", b"1", lease)
    for _ in range(6):  # 3 s, 1.5 TTLs
        await asyncio.sleep(0.5)
        assert await kv.keepalive(lease) > 0
    assert await get(kv, prefix + b"a") is not None
    await kv.revoke(lease)


async def test_a_list_bigger_than_a_grpc_message_is_paged(stores, prefix):
    kv = stores.make()
    value = b"v" * 5000  # 1,100 keys: 5.5 MB, over gRPC's 4 MiB receive limit in one reply
    for start in range(0, 1100, 100):
        await kv.txn([], [Put(prefix + b"%05d" % i, value) for i in range(start, start + 100)])
    entries, revision = await kv.list(prefix)
    assert [e.key for e in entries] == [prefix + b"%05d" % i for i in range(1100)]
    assert all(e.value == value and e.mod_revision <= revision for e in entries)
