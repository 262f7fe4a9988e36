"""Shared state as a revisioned key space (etcd v3's model), with an etcd and an SQLite backend.

Everything above the KV interface (reflector, membership, election) is the
same code on both backends.
"""
from .kv import (DELETE, MAX_TXN_OPS, PUT, KV, Batch, Compacted, Compare, Delete, Event, InvalidRequest, KeyValue,
                 Op, Put, StoreError, StoreUnavailable, Watch, prefix_end)

__all__ = ["DELETE", "MAX_TXN_OPS", "PUT", "KV", "Batch", "Compacted", "Compare", "Delete", "Event",
           "InvalidRequest", "KeyValue", "Op", "Put", "StoreError", "StoreUnavailable", "Watch", "prefix_end"]
