"""What every route shares: the context, reading bodies, answering reads (blocking), errors."""
from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from ..catalog.snapshot import Snapshot
from ..catalog.store import Store
from ..catalog.validate import FieldError, dns_label
from ..config import Config
from ..dns.handler import DnsHandler
from ..health.runner import HealthRunner
from ..sources.config_entries import ConfigEntries
from ..sources.intentions import IntentionEntries
from ..sources.prepared_queries import PreparedQueries
from ..sources.registrations import NotFound, Registrations
from ..sources.sqlite_store import StorageError
from ..sources.status import StatusRegistry
from .acl import Acl, Denied
from .blocking import TooManyWaiters, Watch, index_of, parse_blocking
from .filter import Filter
from .shapes import Views

log = logging.getLogger("meshdns.api")


@dataclass
class ApiContext:
    cfg: Config
    store: Store
    registrations: Registrations
    runner: HealthRunner
    handler: DnsHandler
    acl: Acl
    watch: Watch
    readiness: StatusRegistry
    config: "ConfigEntries | None" = None
    intentions: "IntentionEntries | None" = None
    kubernetes: list = field(default_factory=list)              # KubernetesSource per cluster
    queries: "PreparedQueries | None" = None                    # /v1/query
    peers: list = field(default_factory=list)                   # PeerSource per [[peer]]
    requests: Counter = field(default_factory=Counter)          # (method, route, status) -> n
    http_port: int = 0                                          # the port the API serves on, once started

    @property
    def datacenter(self) -> str:
        return self.cfg.datacenter

    def views(self) -> Views:
        return Views(self.registrations, self.runner, self.store)


CTX = web.AppKey("meshdns", ApiContext)


def ctx_of(request: web.Request) -> ApiContext:
    return request.app[CTX]


# -- input ----------------------------------------------------------------------


class BodyTimeout(Exception):
    """408: the body did not arrive in time (a slow client must not hold a handler forever)."""


# Retry-After for writes refused while the data directory cannot be written
STORAGE_RETRY_AFTER = "5"


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """The body as JSON; too big, not JSON or missing -> FieldError('body', ...) (HTTP 400).

    The whole body must arrive within http.idle_timeout, else BodyTimeout (HTTP 408).
    """
    http = ctx_of(request).cfg.http
    try:
        async with asyncio.timeout(http.idle_timeout):
            raw = await _read_body(request, http.max_body)
    except TimeoutError:
        raise BodyTimeout(f"Request timeout: the body did not arrive within {http.idle_timeout:g}s") from None
    if not raw.strip():
        if required:
            raise FieldError("body", "a JSON object is required")
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FieldError("body", "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise FieldError("body", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        await _drain(request, limit)
        raise FieldError("body", f"request body is larger than {limit} bytes")
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            await _drain(request, limit)
            raise FieldError("body", f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: web.Request, limit: int) -> None:
    """Read and drop a too-big body (bounded) so the client sees our 400, not a reset."""
    budget = 16 * limit
    while budget > 0:
        chunk = await request.content.read(65536)
        if not chunk:
            return
        budget -= len(chunk)


def flag(request: web.Request, name: str) -> bool:
    """Consul's boolean query parameters: present (no value), 'true' or '1' is true."""
    if name not in request.query:
        return False
    value = request.query.get(name, "").lower()
    if value in ("", "true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise FieldError(name, f"{value!r} is not true or false")


def datacenter(request: web.Request) -> str:
    dc = request.query.get("dc")
    if not dc:
        return ctx_of(request).datacenter
    return dns_label(dc, "dc").lower()


def tags_filter(request: web.Request) -> tuple[str, ...]:
    return tuple(t.lower() for t in request.query.getall("tag", ()) if t)


def entry_filter(request: web.Request, schema) -> Filter:
    """?filter= parsed against the endpoint's schema; a bad expression or selector is a 400 naming it."""
    return Filter.parse(request.query.get("filter"), schema)


# -- output ---------------------------------------------------------------------


def json_body(request: web.Request, data: Any) -> bytes:
    if "pretty" in request.query:
        return json.dumps(data, indent=4).encode()
    return json.dumps(data, separators=(",", ":")).encode()


def json_response(request: web.Request, data: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=json_body(request, data), status=status, content_type="application/json",
                        headers=_read_headers(ctx_of(request).store.snapshot))


def _read_headers(snap: Snapshot) -> dict[str, str]:
    return {"X-Consul-Index": str(index_of(snap)), "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}


async def read(request: web.Request, compute: Callable[[Snapshot], Any], *,
               filtered: bool = False) -> web.Response:
    """Answer a catalog/health read; with ?index=N (N = current index) wait for a change first.

    compute(snapshot) builds the answer. The wait ends when the answer changes (an unrelated change
    does not end it: entries carry their own indexes, which change only with them).

    `filtered`: compute applies ?filter= (entry_filter); elsewhere a filter is refused, as it would
    otherwise be silently ignored.
    """
    ctx = ctx_of(request)
    ctx.acl.require_read(request)
    if not filtered and request.query.get("filter"):
        raise FieldError("filter", "this endpoint does not filter its answer")
    index, wait = parse_blocking(request.query, max_wait=ctx.cfg.http.max_wait)
    snap = ctx.store.snapshot
    if index is not None and index > 0 and index == index_of(snap):
        with ctx.watch.slot():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ctx.watch.jittered(wait)
            seen = json_body(request, compute(snap))
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0 or not await ctx.watch.changed(remaining):
                    break
                snap = ctx.store.snapshot
                if json_body(request, compute(snap)) != seen:
                    break
                ctx.watch.unchanged += 1
    snap = ctx.store.snapshot
    return web.Response(body=json_body(request, compute(snap)), content_type="application/json",
                        headers=_read_headers(snap))


def ok(request: web.Request) -> web.Response:
    """Consul's write answers: agent endpoints an empty 200, catalog endpoints `true`."""
    return web.Response(status=200)


def ok_true(request: web.Request) -> web.Response:
    return web.Response(body=b"true", content_type="application/json")


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    """The one place exceptions become HTTP statuses; messages name the field, never a secret."""
    try:
        return await handler(request)
    except FieldError as exc:
        return web.Response(status=400, text=f"Invalid request: {exc}\n")
    except NotFound as exc:
        return web.Response(status=404, text=f"{str(exc)[:1].upper()}{str(exc)[1:]}\n")
    except Denied as exc:
        return web.Response(status=403, text=f"{exc}\n")
    except TooManyWaiters as exc:
        return web.Response(status=429, text=f"{exc}\n", headers={"Retry-After": "1"})
    except StorageError as exc:
        # disk full, read-only, locked: the server is fine and reads work; the write may succeed later
        return web.Response(status=503, headers={"Retry-After": STORAGE_RETRY_AFTER},
                            text=f"Storage unavailable, nothing was changed; retry later: {exc}\n")
    except BodyTimeout as exc:
        response = web.Response(status=408, text=f"{exc}\n")
        response.force_close()  # the rest of the body may still be on its way: do not read it as a request
        return response
