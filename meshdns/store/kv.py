"""One revisioned key-value interface, with etcd v3's semantics, for every backend.

The store has one revision counter; every transaction that changes something
takes the next revision, shared by all its changes. A key carries the
revision that created it, the one that last changed it and how many times it
changed since creation (its version). A watch delivers the changes of each
revision as one batch, in revision order; history older than the compacted
revision is gone, and asking for it raises `Compacted`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Literal, Protocol, Sequence

PUT: Literal["put"] = "put"
DELETE: Literal["delete"] = "delete"
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default; both backends refuse bigger transactions


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """A put (kv is the new state) or a delete (kv holds the key and the deleting revision)."""

    type: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Batch:
    """Everything one revision changed under the watched prefix, in the transaction's order."""

    revision: int
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    """`target` of `key` compared with `value`; a missing key has 0 for every number and no value."""

    key: bytes
    target: Literal["value", "version", "create", "mod", "lease"]
    result: Literal["==", "!=", "<", ">"]
    value: bytes | int


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete `key`, or every key starting with it when `prefix`."""

    key: bytes
    prefix: bool = False


Op = Put | Delete


class StoreError(Exception):
    """The store refused or failed a request."""


class StoreUnavailable(StoreError):
    """No answer within the timeout: members unreachable, no quorum, or no leader."""


class InvalidRequest(StoreError, ValueError):
    """A request the store never accepts (too many ops, a key twice, an unknown lease...)."""


class Compacted(StoreError):
    """The history asked for is older than `revision`, the oldest the store still has."""

    def __init__(self, revision: int):
        super().__init__(f"revision compacted: history starts at {revision}")
        self.revision = revision


class Watch(Protocol):
    """Batches in revision order until closed; raises Compacted or StoreUnavailable."""

    def __aiter__(self) -> AsyncIterator[Batch]: ...
    async def __anext__(self) -> Batch: ...
    async def aclose(self) -> None: ...

    async def request_progress(self) -> None:
        """Have an empty batch at the store's revision now follow everything before it (etcd's progress
        notification): a watcher learns it is current even when nothing under its prefix changed."""


class KV(Protocol):
    backend: str  # "etcd" or "sqlite"

    async def list(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` (key order) and the store revision they are read at."""

    async def watch(self, prefix: bytes, start_revision: int) -> Watch:
        """Changes under `prefix` from `start_revision` (inclusive); raises Compacted if that is gone."""

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> tuple[bool, int]:
        """Apply `success` if every compare holds, else `failure`; (compares held, store revision after)."""

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; keys put with it are deleted when it expires."""

    async def keepalive(self, lease: int) -> int:
        """Refresh the lease once; its TTL in seconds, 0 when it no longer exists."""

    async def revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys (no error if it is already gone)."""

    async def compact(self, revision: int) -> None:
        """Forget history older than `revision`."""

    async def close(self) -> None: ...


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with `prefix` (etcd's range_end); b"\\0" means no end."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def check_ops(ops: Sequence[Op]) -> None:
    """etcd's rules for one branch: at most MAX_TXN_OPS, no key put twice or put inside a deleted range."""
    if len(ops) > MAX_TXN_OPS:
        raise InvalidRequest(f"too many operations in txn request ({len(ops)} > {MAX_TXN_OPS})")
    puts = [op.key for op in ops if isinstance(op, Put)]
    if len(set(puts)) != len(puts):
        raise InvalidRequest("duplicate key given in txn request")
    for op in ops:
        if isinstance(op, Delete):
            if any(key == op.key or (op.prefix and key.startswith(op.key)) for key in puts):
                raise InvalidRequest("duplicate key given in txn request")
