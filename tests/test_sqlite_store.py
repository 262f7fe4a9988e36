"""The durable record store: what commit() returns for is on disk, in order, and applied in order."""
import asyncio
import sqlite3

import pytest

from meshdns.catalog.model import Revision
from meshdns.sources.sqlite_store import DB_NAME, SCHEMA_VERSION, RecordStore, StorageError, Write


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


async def test_revisions_are_etcds(tmp_path):
    """One store revision per transaction that changes something; each key keeps its create and mod revision."""
    db = RecordStore(tmp_path)
    seen = []
    await db.commit([Write("service", "a", {"v": 1}), Write("service", "b", {"v": 1})],
                    lambda: seen.append((db.revision, db.revision_of("service", "a"))))
    assert seen == [(1, Revision(1, 1))] and db.revision_of("service", "b") == Revision(1, 1)
    await db.commit([Write("service", "a", {"v": 2})])
    assert db.revision == 2 and db.revision_of("service", "a") == Revision(1, 2)
    assert db.revision_of("service", "b") == Revision(1, 1)
    await db.commit([Write("service", "a", {"v": 2})])                    # a put always changes (as etcd)
    assert db.revision == 3 and db.revision_of("service", "a") == Revision(1, 3)
    await db.commit([Write("service", "a", {"v": 2}, if_changed=True)])   # unless asked not to
    assert db.revision == 3 and db.revision_of("service", "a") == Revision(1, 3)
    await db.commit([Write("service", "b")])                               # delete
    assert db.revision == 4 and db.revision_of("service", "b") is None
    await db.commit([Write("service", "gone")])                            # deleting nothing changes nothing
    await db.flush()
    assert db.revision == 4
    await db.commit([Write("service", "b", {"v": 9})])                     # created anew
    assert db.revision_of("service", "b") == Revision(5, 5)
    await db.close()
    again = RecordStore(tmp_path)                                          # all of it persists
    assert again.revision == 5
    assert (again.revision_of("service", "a"), again.revision_of("service", "b")) == (Revision(1, 3), Revision(5, 5))
    await again.commit([Write("service", "b")])
    await again.close()
    third = RecordStore(tmp_path)
    assert third.revision == 6, "a delete is a revision too: the counter never goes back"
    await third.close()


async def test_grouped_commits_are_each_their_own_revision(tmp_path):
    db = RecordStore(tmp_path)
    seen = []

    async def one(i):
        await db.commit([Write("k", str(i), {"i": i})], lambda: seen.append((i, db.revision_of("k", str(i)))))

    await asyncio.gather(*(one(i) for i in range(100)))
    assert db.commits < 100
    assert [rev for _, rev in seen] == [Revision(n, n) for n in range(1, 101)]
    assert [i for i, _ in seen] == list(range(100))
    await db.close()


async def test_commit_soon_revisions_reach_the_loop(tmp_path):
    db = RecordStore(tmp_path)
    db.commit_soon([Write("check-status", "c", {"Status": "passing"})])
    await db.flush()
    assert db.revision_of("check-status", "c") == Revision(1, 1)
    await db.close()


async def test_a_failed_commit_takes_no_revision(tmp_path):
    db = RecordStore(tmp_path)
    await db.commit([Write("k", "x", {"v": 1})])
    blocker = sqlite3.connect(tmp_path / DB_NAME, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    db._db.execute("PRAGMA busy_timeout=50")
    with pytest.raises(StorageError):
        await db.commit([Write("k", "x", {"v": 2})])
    blocker.rollback()
    blocker.close()
    assert db.revision == 1 and db.revision_of("k", "x") == Revision(1, 1)
    await db.commit([Write("k", "x", {"v": 3})])
    assert db.revision == 2 and db.revision_of("k", "x") == Revision(1, 2)
    await db.close()


def schema_1(path, rows):
    """A data directory as the previous meshdns wrote it (schema 1: no revisions)."""
    path.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path / DB_NAME)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                 " PRIMARY KEY (kind, key)) WITHOUT ROWID")
    conn.executemany("INSERT INTO records VALUES (?, ?, ?)", rows)
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()


async def test_a_schema_1_data_dir_opens_with_its_records(tmp_path):
    schema_1(tmp_path, [("service", "agent/web-1", '{"Name":"web"}'), ("service-splitter", "billing", '{"x":1}')])
    db = RecordStore(tmp_path)
    assert db.load("service") == {"agent/web-1": {"Name": "web"}}
    assert db.load("service-splitter") == {"billing": {"x": 1}}
    assert db.revision == 1 and db.revision_of("service", "agent/web-1") == Revision(1, 1)
    await db.commit([Write("service", "agent/web-2", {"Name": "web"})])
    assert db.revision_of("service", "agent/web-2") == Revision(2, 2)
    await db.close()
    again = RecordStore(tmp_path)
    assert sorted(again.load("service")) == ["agent/web-1", "agent/web-2"] and again.revision == 2
    await again.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_an_empty_schema_1_data_dir_starts_at_revision_0(tmp_path):
    schema_1(tmp_path, [])
    db = RecordStore(tmp_path)
    assert db.revision == 0
    await db.close()


def test_a_newer_schema_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer meshdns"):
        RecordStore(tmp_path)
