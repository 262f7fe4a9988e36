"""The single-server store of earlier versions (meshdns.db), read once to carry its records over.

meshdns.db kept (kind, key) -> JSON records with their create and mod
revisions (schema 2; schema 1 had no revisions: its records count as written
at revision 1). The first start on the revisioned store copies them, with
those revisions and the store revision, into a store that was never written;
meshdns.db itself is only read and stays as it was.
"""
from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .kv import KeyValue
from .records import record_key

log = logging.getLogger("meshdns.store.legacy")

LEGACY_DB = "meshdns.db"


@dataclass(frozen=True, slots=True)
class LegacyStore:
    path: Path
    schema: int
    revision: int
    records: tuple[tuple[str, str, bytes, int, int], ...]   # kind, key, JSON, create and mod revision

    def entries(self, prefix: bytes) -> list[KeyValue]:
        return [KeyValue(record_key(prefix, kind, key), value, create, mod, 1)
                for kind, key, value, create, mod in self.records]


def read_legacy(data_dir: str | Path) -> LegacyStore | None:
    """meshdns.db in `data_dir`, read-only; None when there is none."""
    path = Path(data_dir) / LEGACY_DB
    if not path.is_file():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        schema = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "records" not in tables:
            return LegacyStore(path, schema, 0, ())
        if schema >= 2:
            rows = db.execute("SELECT kind, key, value, create_revision, mod_revision FROM records"
                              " ORDER BY kind, key").fetchall()
            revision = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        else:
            rows = [(*row, 1, 1) for row in db.execute("SELECT kind, key, value FROM records ORDER BY kind, key")]
            revision = 1 if rows else 0
    finally:
        db.close()
    records = tuple((kind, key, value.encode() if isinstance(value, str) else bytes(value), create, mod)
                    for kind, key, value, create, mod in rows)
    return LegacyStore(path, schema, revision, records)


async def import_legacy(kv, data_dir: str | Path, prefix: bytes) -> int | None:
    """Copy meshdns.db into `kv` (an SqliteKV) if that store was never written; the schema imported from."""
    legacy = read_legacy(data_dir) if kv.fresh else None
    if legacy is None:
        return None
    if not await kv.restore(legacy.entries(prefix), legacy.revision):
        return None
    log.info("%s: imported %d records of %s (schema %d) at revision %d; %s is no longer read", kv,
             len(legacy.records), legacy.path, legacy.schema, legacy.revision, legacy.path.name)
    return legacy.schema
