"""Keeping a lease alive: the store clients have no background keepalive, so this is our own task."""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from .kv import KV, StoreError

log = logging.getLogger("meshdns.store.leases")


async def keep_alive(kv: KV, lease: int, ttl: float, *,
                     sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Refresh `lease` every ttl/3; returns once the store says it is gone.

    While the store is unreachable it keeps trying: a lease outlives short
    outages, and if it expired meanwhile the first answer says so.
    """
    failing = False
    while True:
        await sleep(ttl / 3)
        try:
            left = await kv.keepalive(lease)
        except StoreError as exc:
            if not failing:
                log.warning("%s: lease %x not refreshed: %s", kv, lease, exc)
            failing = True
            continue
        failing = False
        if left <= 0:
            log.warning("%s: lease %x expired", kv, lease)
            return
