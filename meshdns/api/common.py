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
from ..sources.status import StatusRegistry
from ..store.kv import InvalidRequest, StoreError, StoreUnavailable
from ..store.records import Records
from ..store.replicas import SingleReplica
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
    records: "Records | None" = None                            # the shared store (its status, its revision)
    replicas: object = field(default_factory=lambda: SingleReplica("local"))   # members and the leader
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


# Retry-After for writes refused while the store cannot take them
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
    ctx = ctx_of(request)
    return web.Response(body=json_body(request, data), status=status, content_type="application/json",
                        headers=_read_headers(ctx, ctx.store.snapshot))


def _read_headers(ctx: ApiContext, snap: Snapshot) -> dict[str, str]:
    """A replica cut off from the store answers from its last snapshot and says it knows no leader."""
    known = ctx.records is None or ctx.records.reflector.connected or not ctx.replicas.clustered
    return {"X-Consul-Index": str(index_of(snap)), "X-Consul-KnownLeader": "true" if known else "false",
            "X-Consul-LastContact": "0"}


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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.watch.jittered(wait) if index else 0.0
    if index is not None and index > index_of(snap):  # e.g. from another replica: first catch up with it
        with ctx.watch.slot():
            await _catch_up(ctx, index, deadline)
        snap = ctx.store.snapshot
    if index is not None and index > 0 and index == index_of(snap):
        with ctx.watch.slot():
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
                        headers=_read_headers(ctx, snap))


async def _catch_up(ctx: ApiContext, index: int, deadline: float) -> None:
    """Wait until this replica has applied the store revision `index` stands for, as far as the store has
    reached it (an index past the store's revision counts changes of another replica's own sources: then
    the answer comes at once, with a lower index, and the client starts over, as Consul's clients do)."""
    remaining = deadline - asyncio.get_running_loop().time()
    if ctx.records is None or remaining <= 0:
        return
    try:
        await ctx.records.catch_up(index, remaining)
    except (StoreError, asyncio.TimeoutError):
        pass   # the store does not answer: answer from what this replica has


def ok(request: web.Request) -> web.Response:
    """Consul's write answers: agent endpoints an empty 200, catalog endpoints `true`."""
    return web.Response(status=200)


def ok_true(request: web.Request) -> web.Response:
    return web.Response(body=b"true", content_type="application/json")


WRITES = frozenset({"PUT", "POST", "DELETE"})


@web.middleware
async def consistent_writes(request: web.Request, handler) -> web.StreamResponse:
    """With replicas, a write is checked against the store as it is now, not this replica's view of a moment
    ago (a split naming a service registered through another replica an instant before is valid)."""
    ctx = ctx_of(request)
    if request.method in WRITES and ctx.replicas.clustered and ctx.records is not None:
        try:
            caught_up = await ctx.records.catch_up()
        except asyncio.TimeoutError:
            caught_up = False
        if not caught_up:
            raise StoreUnavailable(f"{ctx.records}: this replica could not catch up with the store within "
                                   f"{ctx.records.timeout:g}s")
    return await handler(request)


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
    except InvalidRequest as exc:
        return web.Response(status=400, text=f"Invalid request: {exc}\n")
    except StoreError as exc:
        # disk full, read-only, etcd unreachable or without quorum: reads and DNS go on from the last
        # snapshot; the write may succeed later
        return web.Response(status=503, headers={"Retry-After": STORAGE_RETRY_AFTER},
                            text=f"{store_unavailable(ctx_of(request), exc)}\n")
    except BodyTimeout as exc:
        response = web.Response(status=408, text=f"{exc}\n")
        response.force_close()  # the rest of the body may still be on its way: do not read it as a request
        return response


def store_unavailable(ctx: ApiContext, exc: StoreError) -> str:
    """503's message: which store, and whether the write may have happened."""
    if ctx.records is None or ctx.records.backend == "sqlite":
        return f"Storage unavailable, nothing was changed; retry later: {exc}"
    return (f"Store unavailable ({ctx.records}): {exc}; the write may or may not have been applied: "
            f"retry later (writes are idempotent)")
