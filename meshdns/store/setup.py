"""From the [store] table to a running store: the KV backend, the shared records, this replica."""
from __future__ import annotations

import os
import secrets
import socket

from ..config import Config, ConfigError, StoreConfig, read_secret
from .kv import KV
from .legacy import import_legacy
from .records import Records
from .replicas import ClusterReplicas, SingleReplica


def open_kv(store: StoreConfig, data_dir: str) -> KV:
    """The backend the config names; a bad endpoint or an unreadable file is a ConfigError naming the key."""
    if store.backend == "sqlite":
        from .sqlite import SqliteKV
        return SqliteKV(data_dir)
    from .etcd import EtcdKV
    password = read_secret(store.password_file, key="store.password_file") if store.password_file else None
    try:
        return EtcdKV(store.endpoints, timeout=store.timeout, username=store.username or None, password=password,
                      ca_file=store.ca_file or None, cert_file=store.cert_file or None,
                      key_file=store.key_file or None)
    except ValueError as exc:
        message = str(exc)
        key = message.split(":", 1)[0].split(" ")[0]
        raise ConfigError(f"store.{message}" if key in ("endpoints", "ca_file", "cert_file", "key_file")
                          else f"store: {message}") from None


def replica_id(cfg: Config) -> str:
    """Unique per process: a restarted replica is a new member (its old key lapses with its lease)."""
    host = cfg.node_name or socket.gethostname().split(".")[0] or "meshdns"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def open_store(cfg: Config) -> tuple[Records, SingleReplica | ClusterReplicas]:
    """The records and this replica; SQLite's file is opened (and locked) only when the server starts."""
    store = cfg.store
    if store.backend == "sqlite":
        records = Records(lambda: open_kv(store, cfg.data_dir), store.prefix.encode(), backend="sqlite",
                          timeout=store.timeout)
        return records, SingleReplica(replica_id(cfg))
    records = Records(open_kv(store, cfg.data_dir), store.prefix.encode(), timeout=store.timeout)
    return records, ClusterReplicas(records, replica_id(cfg), ttl=int(store.member_ttl))


async def start_store(records: Records, cfg: Config) -> None:
    """Carry over an earlier single-server store (SQLite only), then mirror the store: first full read."""
    kv = records.open()
    if records.backend == "sqlite":
        records.upgraded_from = await import_legacy(kv, cfg.data_dir, records.prefix)
    await records.start()
