"""`meshdns store migrate`: copy a single server's records into etcd, from one server to several.

The source is a data directory: its store (store.db), or the meshdns.db of an
earlier version. Every record whose value etcd does not already hold is put
(up to 128 per transaction); a record etcd holds with the same value is left
alone, so a second run writes nothing and every index stays as it was. The
records' revisions start afresh in etcd (its revisions are its own); their
values, statuses included, are carried over as they are.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ..config import ConfigError, StoreConfig, endpoint_problem, parse_duration
from .kv import KV, MAX_TXN_OPS, KeyValue, Put, StoreError
from .legacy import read_legacy
from .records import VERSION_DIR


async def read_source(data_dir: Path, prefix: bytes) -> list[KeyValue]:
    """The records of a single server's data directory (the server must be stopped: its store is locked)."""
    from .sqlite import DB_NAME, SqliteKV
    if (data_dir / DB_NAME).is_file():
        kv = SqliteKV(data_dir)
        try:
            return (await kv.list(prefix + VERSION_DIR))[0]
        finally:
            await kv.close()
    legacy = read_legacy(data_dir)
    if legacy is None:
        raise ConfigError(f"--data-dir: {data_dir} holds no meshdns store ({DB_NAME} or meshdns.db)")
    return legacy.entries(prefix)


async def migrate(entries: list[KeyValue], source_prefix: bytes, target: KV, prefix: bytes) -> tuple[int, int]:
    """Put every record etcd lacks or holds with another value; (records written, records already there)."""
    existing = {kv.key: kv.value for kv in (await target.list(prefix + VERSION_DIR))[0]}
    todo = []
    for kv in entries:
        key = prefix + kv.key[len(source_prefix):]
        if existing.get(key) != kv.value:
            todo.append(Put(key, kv.value))
    for i in range(0, len(todo), MAX_TXN_OPS):
        await target.txn((), todo[i:i + MAX_TXN_OPS])
    return len(todo), len(entries) - len(todo)


def add_parser(sub) -> None:
    store = sub.add_parser("store", help="the shared store").add_subparsers(dest="store_command", required=True)
    p = store.add_parser("migrate", help="copy a single server's data directory into etcd (idempotent)")
    p.add_argument("--data-dir", required=True, help="the single server's data directory (server stopped)")
    p.add_argument("--endpoints", required=True, help="etcd client URLs, comma-separated")
    p.add_argument("--prefix", default="/meshdns/", help="key prefix in etcd (default /meshdns/)")
    p.add_argument("--source-prefix", default="/meshdns/",
                   help="the data directory's store prefix (its [store] prefix; default /meshdns/)")
    p.add_argument("--timeout", default="5s", help="per request (default 5s)")
    for name in ("ca-file", "cert-file", "key-file", "username", "password-file"):
        p.add_argument(f"--{name}", default="")


def main(args: argparse.Namespace) -> int:
    from .setup import open_kv
    try:
        endpoints = tuple(e.strip() for e in args.endpoints.split(",") if e.strip())
        problems = [endpoint_problem(e) for e in endpoints] if endpoints else ["at least one etcd endpoint is needed"]
        if any(problems):
            raise ConfigError(f"--endpoints: {next(p for p in problems if p)}")
        for flag, value in (("--prefix", args.prefix), ("--source-prefix", args.source_prefix)):
            if not (value.startswith("/") and value.endswith("/")):
                raise ConfigError(f"{flag}: {value!r} must start and end with '/'")
        settings = StoreConfig(backend="etcd", endpoints=endpoints, prefix=args.prefix,
                               timeout=parse_duration(args.timeout, key="--timeout"), ca_file=args.ca_file,
                               cert_file=args.cert_file, key_file=args.key_file, username=args.username,
                               password_file=args.password_file)
    except ConfigError as exc:
        print(f"meshdns store migrate: {exc}", file=sys.stderr)
        return 2

    async def run() -> tuple[int, int]:
        entries = await read_source(Path(args.data_dir), args.source_prefix.encode())
        target = open_kv(settings, args.data_dir)
        try:
            return await migrate(entries, args.source_prefix.encode(), target, args.prefix.encode())
        finally:
            await target.close()

    try:
        written, kept = asyncio.run(run())
    except (ConfigError, StoreError, OSError) as exc:
        print(f"meshdns store migrate: {exc}", file=sys.stderr)
        return 1
    print(f"migrated {args.data_dir} into etcd {','.join(endpoints)} under {args.prefix}: "
          f"{written} records written, {kept} already there")
    return 0
