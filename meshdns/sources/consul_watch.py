"""Following a Consul-shaped HTTP endpoint with blocking queries, by the rules Consul's docs give.

- The index goes backwards (a restored snapshot, a new leader with other
  indexes): start over with a plain read (index 0) instead of waiting for an
  index that may never come back.
- An index below 1 is used as 1: index 0 means "do not block", and a peer
  that keeps answering 0 must not be hammered in a tight loop.
- Errors back off (capped, jittered) and the last good answer stays in force;
  the first request after an error is a plain read, because the peer may have
  restarted with other content at the very index we were waiting on.
- The wait asked for is jittered, so thousands of watches started together
  do not all come back together.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, Awaitable, Callable

import aiohttp

from .backoff import Backoff

log = logging.getLogger("meshdns.sources.peers")

USER_AGENT = "meshdns peer import"


class PeerError(Exception):
    """A request to the peer failed; the message names what and why (never the token)."""


def next_index(last: int | None, returned: int) -> int:
    """The index for the next request, from the peer's previous X-Consul-Index (None: none yet) and this one.

    Compared with what the peer said before, not with the index we sent: a peer stuck at 0 is asked
    with 1 each time, which is no step backwards."""
    if last is not None and returned < last:
        return 0
    return max(returned, 1)


def jittered_wait(wait: float, rng: random.Random) -> float:
    """Up to 1/16 less than `wait` (never more: a peer caps waits at 10 minutes)."""
    return wait - rng.uniform(0, wait / 16)


class ConsulClient:
    """GETs against one peer's HTTP API, in its datacenter, with its token."""

    def __init__(self, url: str, *, datacenter: str, token: str, timeout: float):
        self.url = url
        self.datacenter = datacenter
        self.timeout = timeout
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            headers["X-Consul-Token"] = token
        # one connection per parked blocking query: no pool limit, no proxy from the environment
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers,
                                             trust_env=False)

    async def get(self, path: str, *, index: int, wait: float) -> tuple[int, Any]:
        """(X-Consul-Index, JSON body). index 0: a plain read; otherwise block up to `wait` for a change."""
        params = {"dc": self.datacenter}
        budget = self.timeout
        if index > 0:
            params.update(index=str(index), wait=f"{wait:.3f}s")
            budget += wait + wait / 16  # the peer may add up to wait/16 of its own jitter
        where = f"GET {self.url}{path}"
        try:
            async with self.session.get(self.url + path, params=params,
                                        timeout=aiohttp.ClientTimeout(total=budget)) as resp:
                if resp.status != 200:
                    text = (await resp.content.read(300)).decode("utf-8", "replace").strip()
                    raise PeerError(f"{where}: HTTP {resp.status}{': ' + text if text else ''}")
                body = await resp.json(content_type=None)
                header = resp.headers.get("X-Consul-Index", "")
        except asyncio.TimeoutError:
            raise PeerError(f"{where}: no answer within {budget:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise PeerError(f"{where}: {exc or type(exc).__name__}") from None
        except ValueError as exc:
            raise PeerError(f"{where}: the answer is not JSON ({exc})") from None
        return (int(header) if header.isdigit() else 0), body

    async def close(self) -> None:
        await self.session.close()


class BlockingLoop:
    """Follows one endpoint for ever: each answer goes to `on_answer`, each failure to `on_error`.

    `gate` bounds the plain reads (index 0) in flight, so a first sync of thousands
    of services does not open thousands of connections at once.
    """

    def __init__(self, client: ConsulClient, path: str, *, wait: float, backoff: Backoff, rng: random.Random,
                 on_answer: Callable[[Any], None], on_error: Callable[[str], None],
                 gate: asyncio.Semaphore | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.client = client
        self.path = path
        self.wait = wait
        self.backoff = backoff
        self.rng = rng
        self.on_answer = on_answer
        self.on_error = on_error
        self.gate = gate
        self.sleep = sleep
        self.index = 0                   # sent with the next request
        self.last: int | None = None     # the peer's X-Consul-Index on the last answer

    async def run(self) -> None:
        while True:
            asked = self.index
            gate = self.gate if asked == 0 and self.gate is not None else contextlib.nullcontext()
            try:
                async with gate:
                    returned, body = await self.client.get(self.path, index=asked,
                                                           wait=jittered_wait(self.wait, self.rng))
                self.on_answer(body)
            except Exception as exc:  # this loop must outlive anything the peer sends
                if not isinstance(exc, PeerError):
                    log.exception("following %s%s failed", self.client.url, self.path)
                self.on_error(str(exc) if isinstance(exc, PeerError) else
                              f"GET {self.client.url}{self.path}: cannot use the answer ({type(exc).__name__})")
                self.index, self.last = 0, None
                await self.sleep(self.backoff.next())
                continue
            if asked:  # only a blocking query that worked ends the backoff (a peer refusing them, 429, keeps it)
                self.backoff.reset()
            self.index, self.last = next_index(self.last, returned), returned
