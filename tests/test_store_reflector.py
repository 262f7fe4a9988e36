"""The reflector: a consumer's copy of a prefix stays equal to the store, with nothing lost or applied twice.

On both backends: following writes, compaction while the consumer is paused,
and the safety net that repairs a change the watch lost. On a real etcd:
kill -9 of a follower and of the leader during a stream of acknowledged
writes, a hung (SIGSTOPped) member, and the loss of every member.
"""
from __future__ import annotations

import asyncio
import collections

from etcd_cluster import eventually, etcd, etcd_own, prefix, stores  # noqa: F401 (fixtures)
from meshdns.store import DELETE, PUT, Batch, Compare, Delete, Put, StoreUnavailable
from meshdns.store.reflector import Reflector


class Consumer:
    """What a snapshot builder does with batches, plus a count of every change it was handed."""

    def __init__(self):
        self.state: dict[bytes, bytes] = {}
        self.handed = collections.Counter()  # (key, mod revision, type) -> times handed over
        self.revisions: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    async def __call__(self, batch: Batch) -> None:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        self.revisions.append(batch.revision)
        for event in batch.events:
            self.handed[(event.kv.key, event.kv.mod_revision, event.type)] += 1
            if event.type == PUT:
                self.state[event.kv.key] = event.kv.value
            else:
                self.state.pop(event.kv.key, None)

    def assert_once_in_order(self, repairs: int = 0) -> None:
        """No change handed over twice; revisions only grow (a repair may come at the last revision)."""
        twice = [change for change, n in self.handed.items() if n > 1]
        assert twice == [], f"applied twice: {twice[:5]}"
        assert self.revisions == sorted(self.revisions), "batches out of order"
        assert len(self.revisions) - len(set(self.revisions)) <= repairs, "a revision handed over twice"


async def fresh(kv, prefix) -> dict[bytes, bytes]:
    entries, _ = await kv.list(prefix)
    return {e.key: e.value for e in entries}


async def start(kv, prefix, consumer, **options) -> tuple[Reflector, asyncio.Task]:
    reflector = Reflector(kv, prefix, consumer, **options)
    task = asyncio.create_task(reflector.run())
    await asyncio.wait_for(reflector.ready.wait(), 30)
    return reflector, task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_consumer_follows_puts_and_deletes(stores, prefix):
    kv = stores.make()
    await kv.txn([], [Put(prefix + b"a", b"1"), Put(prefix + b"b", b"2")])
    consumer = Consumer()
    reflector, task = await start(kv, prefix, consumer)
    try:
        assert consumer.state == {prefix + b"a": b"1", prefix + b"b": b"2"}
        await kv.txn([], [Put(prefix + b"c", b"3"), Delete(prefix + b"a")])
        _, last = await kv.txn([], [Put(prefix + b"b", b"two")])
        await eventually(lambda: reflector.revision == last, what="the last write applied")
        assert consumer.state == await fresh(kv, prefix) == {prefix + b"b": b"two", prefix + b"c": b"3"}
        assert consumer.revisions[-1] == last
        consumer.assert_once_in_order()
    finally:
        await stop(task)


async def test_compaction_while_the_consumer_is_paused_relists_with_deletes(stores, prefix):
    # etcd buffers a few MB for a stalled watcher; SQLite's buffer is set small
    kv = stores.make(watch_buffer=16)
    count, value = (2000, b"v" * 10_000) if stores.backend == "etcd" else (200, b"v" * 100)
    await kv.txn([], [Put(prefix + b"old/%d" % i, b"x") for i in range(10)])
    consumer = Consumer()
    reflector, task = await start(kv, prefix, consumer)
    try:
        consumer.gate.clear()
        await kv.txn([], [Put(prefix + b"wake", b"1")])
        await asyncio.wait_for(consumer.waiting.wait(), 30)  # the consumer now holds the reflector up

        async def writer(first: int) -> None:
            for i in range(first, count, 8):
                await kv.txn([], [Put(prefix + b"new/%05d" % i, value)])
        await asyncio.gather(*(writer(i) for i in range(8)))
        await kv.txn([], [Delete(prefix + b"old/", prefix=True), Delete(prefix + b"new/00000")])
        _, last = await kv.txn([], [Put(prefix + b"last", b"1")])
        await kv.compact(last)
        consumer.gate.set()

        await eventually(lambda: reflector.revision >= last, 60, what="caught up after compaction")
        assert reflector.relists >= 2, "the compaction was not noticed"
        expected = await fresh(kv, prefix)
        assert consumer.state == expected and len(expected) == count + 1  # wake + new/* - new/00000 + last
        assert not any(key.startswith(prefix + b"old/") for key in consumer.state)
        consumer.assert_once_in_order()
        assert reflector.repairs == 0
    finally:
        await stop(task)


class LosingKV:
    """A store whose watches drop the first DELETE under `prefix`, as etcd#18089 did at compaction."""

    def __init__(self, kv):
        self.kv = kv
        self.dropped = 0

    def __getattr__(self, name):
        return getattr(self.kv, name)

    async def watch(self, prefix, start_revision):
        return _Losing(self, await self.kv.watch(prefix, start_revision))


class _Losing:
    def __init__(self, owner: LosingKV, watch):
        self.owner, self.watch = owner, watch

    def __aiter__(self):
        return self

    async def __anext__(self) -> Batch:
        batch = await self.watch.__anext__()
        if not self.owner.dropped and any(e.type == DELETE for e in batch.events):
            self.owner.dropped += 1
            return Batch(batch.revision, tuple(e for e in batch.events if e.type != DELETE))
        return batch

    async def aclose(self):
        await self.watch.aclose()


async def test_the_periodic_safety_net_repairs_a_delete_the_watch_lost(stores, prefix):
    kv = LosingKV(stores.make())
    await kv.txn([], [Put(prefix + b"a", b"1"), Put(prefix + b"b", b"2")])
    ticks: asyncio.Queue = asyncio.Queue()

    async def timer(interval: float) -> None:  # the resync interval passes when the test says so
        assert interval == 600.0
        await ticks.get()

    consumer = Consumer()
    reflector, task = await start(kv, prefix, consumer, sleep=timer)
    try:
        await kv.txn([], [Delete(prefix + b"a")])
        _, last = await kv.txn([], [Put(prefix + b"c", b"3")])
        await eventually(lambda: reflector.revision == last, what="the put after the lost delete applied")
        assert kv.dropped == 1 and prefix + b"a" in consumer.state  # the mirror is wrong now
        ticks.put_nowait(None)
        await eventually(lambda: reflector.repairs == 1, what="the safety net ran")
        assert consumer.state == await fresh(kv, prefix) == {prefix + b"b": b"2", prefix + b"c": b"3"}
        await kv.txn([], [Put(prefix + b"d", b"4")])  # and it follows the store again
        await eventually(lambda: prefix + b"d" in consumer.state, what="a write after the repair")
        consumer.assert_once_in_order(repairs=1)
    finally:
        await stop(task)


async def test_kill_9_of_a_follower_and_the_leader_during_acknowledged_writes(etcd_own, prefix):
    cluster = etcd_own
    writer_kv = cluster.client(timeout=2)
    watch_kv = cluster.client(timeout=2)
    consumer = Consumer()
    reflector, task = await start(watch_kv, prefix, consumer)
    acked: dict[bytes, bytes] = {}
    failures = 0

    async def write(i: int) -> None:
        nonlocal failures
        key, value = prefix + b"k%05d" % i, b"value %d" % i
        for _ in range(200):  # a write whose outcome is unknown is retried: a put is idempotent
            try:
                await writer_kv.txn([], [Put(key, value)])
                acked[key] = value
                return
            except StoreUnavailable:
                failures += 1
                await asyncio.sleep(0.05)
        raise AssertionError(f"{key!r} never acknowledged")

    async def stream(first: int, last: int) -> None:
        for i in range(first, last):
            await write(i)

    async def kill_during_writes(victim: int, first: int, last: int) -> None:
        writes = asyncio.create_task(stream(first, last))
        await asyncio.to_thread(cluster.kill, victim)
        await writes
        await asyncio.to_thread(cluster.restart, victim)
        await asyncio.to_thread(cluster.wait_healthy)

    try:
        await stream(0, 100)
        await kill_during_writes((cluster.leader() + 1) % 3, 100, 300)  # a follower
        await stream(300, 400)
        await kill_during_writes(await asyncio.to_thread(cluster.leader), 400, 600)
        await stream(600, 700)

        _, last = await writer_kv.txn([], [Put(prefix + b"end", b"1")])
        acked[prefix + b"end"] = b"1"
        await eventually(lambda: reflector.revision >= last, 60, what="the reflector caught up")
        expected = await fresh(writer_kv, prefix)
        assert expected == acked, "an acknowledged write is missing from etcd"
        assert consumer.state == expected  # 0 lost
        consumer.assert_once_in_order()  # 0 applied twice
        assert reflector.relists == 1 and reflector.repairs == 0
    finally:
        await stop(task)
        await writer_kv.close()
        await watch_kv.close()


async def test_a_hung_member_under_the_watch_is_noticed(etcd_own, prefix):
    cluster = etcd_own
    kv = cluster.client(timeout=3)
    consumer = Consumer()
    reflector, task = await start(kv, prefix, consumer)
    try:
        for stopped in range(3):  # one of them carries the watch stream
            cluster.pause(stopped)
            try:
                via = (stopped + 1) % 3
                key = prefix + b"while-%d-stopped" % stopped
                await asyncio.to_thread(lambda: wait_put(cluster, key, via))
                await eventually(lambda: key in consumer.state, 60, what=f"a write while m{stopped} hangs")
            finally:
                cluster.resume(stopped)
            await asyncio.to_thread(cluster.wait_healthy)
        consumer.assert_once_in_order()
    finally:
        await stop(task)
        await kv.close()


def wait_put(cluster, key: bytes, via: int) -> None:
    """Put through one member, retrying while the cluster elects a new leader."""
    from harness import wait_until
    wait_until(lambda: _try_put(cluster, key, via), 60, 0.2, what=f"put {key!r}")


def _try_put(cluster, key: bytes, via: int) -> bool:
    try:
        cluster.put(key, b"1", via=via)
        return True
    except OSError:
        return False


async def test_all_members_down_then_up_recovers_by_itself(etcd_own, prefix):
    cluster = etcd_own
    kv = cluster.client(timeout=2)
    consumer = Consumer()
    reflector, task = await start(kv, prefix, consumer)
    try:
        await kv.txn([], [Put(prefix + b"before", b"1")])
        leader = cluster.leader()
        for i in range(3):  # quorum first: the two followers gone
            if i != leader:
                cluster.kill(i)
        await assert_unavailable(kv, prefix)
        for i in range(3):
            cluster.kill(i)
        await assert_unavailable(kv, prefix)
        await eventually(lambda: not reflector.connected, 30, what="the reflector says disconnected")

        for i in range(3):
            cluster.restart(i)
        await asyncio.to_thread(cluster.wait_healthy)
        for _ in range(100):
            try:
                _, last = await kv.txn([], [Put(prefix + b"after", b"1")])
                break
            except StoreUnavailable:
                await asyncio.sleep(0.2)
        await eventually(lambda: reflector.revision >= last, 60, what="the reflector resumed")
        assert reflector.connected and reflector.reconnects >= 1
        expected = await fresh(kv, prefix)
        assert consumer.state == expected
        # a write refused without quorum has an unknown outcome: the lone leader may commit it after the restart
        assert set(expected) - {prefix + b"x"} == {prefix + b"before", prefix + b"after"}
        consumer.assert_once_in_order()
    finally:
        await stop(task)
        await kv.close()


async def assert_unavailable(kv, prefix) -> None:
    """A write fails with StoreUnavailable, well inside a generous bound (never hangs); its outcome is unknown."""
    try:
        await asyncio.wait_for(kv.txn([Compare(prefix + b"x", "create", "==", 0)], [Put(prefix + b"x", b"1")]),
                               kv.timeout * 5)
    except StoreUnavailable:
        return
    raise AssertionError("a write succeeded without quorum")
