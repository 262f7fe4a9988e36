"""/v1/query: Consul's prepared queries (create, list, get, update, delete, execute, explain).

Execute runs the same code as `<name>.query.consul` (catalog/queries.py), with the
failover order the DNS answers use, so the API says what DNS serves.
"""
from __future__ import annotations

from aiohttp import web

from ..catalog import queries
from ..catalog.validate import FieldError
from ..sources.prepared_queries import dns_json, query_json
from ..sources.registrations import NotFound
from .common import ctx_of, datacenter, json_response, read_json
from .health import entry_json

routes = web.RouteTableDef()


def _authorizer(request: web.Request):
    acl = ctx_of(request).acl
    return lambda names: acl.require_service_write(request, names)


@routes.post("/v1/query")
async def create(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    q = await ctx.queries.create(await read_json(request), authorize=_authorizer(request))
    return json_response(request, {"ID": q.id})


@routes.get("/v1/query")
async def list_queries(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_read(request)
    return json_response(request, [query_json(q) for q in sorted(ctx.queries.queries.values(),
                                                                key=lambda q: (q.name, q.id))])


@routes.get("/v1/query/{id}")
async def get(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_read(request)
    return json_response(request, [query_json(ctx.queries.get(request.match_info["id"]))])


@routes.put("/v1/query/{id}")
async def update(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    await ctx.queries.update(request.match_info["id"], await read_json(request), authorize=_authorizer(request))
    return web.Response(status=200)


@routes.delete("/v1/query/{id}")
async def delete(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    await ctx.queries.delete(request.match_info["id"], authorize=_authorizer(request))
    return web.Response(status=200)


def _resolve(request: web.Request):
    """The query named in the URL (ID, name, or a template's prefix), made concrete for that name."""
    ctx = ctx_of(request)
    ctx.acl.require_read(request)
    if datacenter(request) != ctx.datacenter:
        raise FieldError("dc", "a prepared query runs in the datacenter that stores it (failover reaches peers)")
    key = request.match_info["id"]
    snap = ctx.store.snapshot
    found = queries.find(snap.queries, key)
    if found is None:
        raise NotFound(f"prepared query {key!r} not found")
    return snap, queries.render(found, key)


@routes.get("/v1/query/{id}/execute")
async def execute(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    snap, q = _resolve(request)
    raw_limit = request.query.get("limit", "")
    if raw_limit and not raw_limit.isdigit():
        raise FieldError("limit", f"{raw_limit!r} is not a non-negative integer")
    outcome = queries.execute(snap, q, peers=ctx.handler.opts.peer_datacenters)
    found = outcome.instances[:int(raw_limit)] if raw_limit and int(raw_limit) else outcome.instances
    views = ctx.views()
    return json_response(request, {
        "Service": q.service, "Nodes": [entry_json(inst, snap, views) for inst in found], "DNS": dns_json(q),
        "Datacenter": outcome.datacenter, "Failovers": outcome.failovers})


@routes.get("/v1/query/{id}/explain")
async def explain(request: web.Request) -> web.Response:
    _, q = _resolve(request)
    return json_response(request, {"Query": query_json(q)})
