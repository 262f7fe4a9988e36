"""The durable record store: what commit() returns for is on disk, in order, and applied in order."""
import asyncio
import sqlite3

import pytest

from meshdns.sources.sqlite_store import DB_NAME, RecordStore, StorageError, Write


async def test_commit_then_reopen(tmp_path):
    db = RecordStore(tmp_path)
    await db.commit([Write("service", "a", {"Name": "a"}), Write("service", "b", {"Name": "b"})])
    await db.commit([Write("service", "a")])  # delete
    await db.commit([Write("service-splitter", "billing", {"Splits": []})])
    await db.close()
    again = RecordStore(tmp_path)
    assert again.load("service") == {"b": {"Name": "b"}}
    assert again.load("service-splitter") == {"billing": {"Splits": []}}
    await again.close()


async def test_wal_and_full_sync(tmp_path):
    db = RecordStore(tmp_path)
    await db.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_concurrent_commits_are_grouped_and_applied_in_order(tmp_path):
    db = RecordStore(tmp_path)
    applied = []

    async def one(i):
        await db.commit([Write("k", str(i % 7), {"i": i})], lambda: applied.append(i))

    await asyncio.gather(*(one(i) for i in range(300)))
    assert sorted(applied) == list(range(300))
    assert applied == sorted(applied), "apply must run in commit (submission) order"
    assert db.commits < 300, "concurrent writers should share transactions"
    # last write per key wins on disk, as in memory
    assert {k: v["i"] for k, v in db.load("k").items()} == {str(r): max(i for i in range(300) if i % 7 == r)
                                                            for r in range(7)}
    await db.close()


async def test_unencodable_value_is_refused_before_anything_is_written(tmp_path):
    db = RecordStore(tmp_path)
    applied = []
    with pytest.raises(ValueError):
        await db.commit([Write("k", "x", {"v": 1}), Write("k", "y", {"v": float("nan")})], lambda: applied.append(1))
    assert applied == [] and db.load("k") == {}
    await db.close()


async def test_storage_failure_applies_nothing(tmp_path):
    db = RecordStore(tmp_path)
    await db.commit([Write("k", "x", {"v": 1})])
    blocker = sqlite3.connect(tmp_path / DB_NAME, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    db._db.execute("PRAGMA busy_timeout=50")
    applied = []
    with pytest.raises(StorageError) as failure:
        await db.commit([Write("k", "x", {"v": 2})], lambda: applied.append(1))
    assert failure.value.reason == "locked" and DB_NAME in str(failure.value)
    blocker.rollback()
    blocker.close()
    assert applied == [] and db.load("k") == {"x": {"v": 1}}
    await db.commit([Write("k", "x", {"v": 3})])  # the writer thread survived
    assert db.load("k") == {"x": {"v": 3}}
    await db.close()
