"""/v1/catalog/*: the merged catalog (every source) and external-node writes (consul-esm)."""
from __future__ import annotations

from aiohttp import web

from ..catalog.model import Instance
from ..catalog.snapshot import Snapshot
from ..catalog.validate import FieldError, identifier, node_name, service_name
from ..health.spec import get_field
from ..sources.registration_model import parse_catalog_register, parse_datacenter
from .common import ctx_of, datacenter, entry_filter, ok_true, read, read_json, tags_filter
from .peers import refuse_peer_datacenter
from .shapes import CATALOG_SERVICE, NODE, SERVICE

routes = web.RouteTableDef()


def has_tags(inst: Instance, tags: tuple[str, ...]) -> bool:
    """Consul's ?tag= filter: every given tag, compared case-insensitively."""
    mine = {t.lower() for t in inst.tags}
    return all(t in mine for t in tags)


def instances(snap: Snapshot, dc: str, name: str, tags: tuple[str, ...] = ()) -> list[Instance]:
    return [i for i in snap.services.get((dc, name.lower()), ()) if has_tags(i, tags)]


# -- writes -------------------------------------------------------------------------


@routes.put("/v1/catalog/register")
async def register(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    regs = ctx.registrations
    reg = parse_catalog_register(await read_json(request), datacenter=ctx.datacenter)
    refuse_peer_datacenter(ctx, reg.node.datacenter, "Datacenter")
    node_known = reg.node.key in regs.nodes
    node_write = not (node_known and (reg.skip_node_update or regs.nodes[reg.node.key] == reg.node))
    node_checks = any(not c.service_id for c in reg.checks)
    if node_write or node_checks:
        ctx.acl.require_node_write(request)
    names = set()
    if reg.service is not None:
        names.add(reg.service.name)
        old = regs.services.get(reg.service.key)
        if old is not None:
            names.add(old.name)
    names |= regs.service_names((*reg.node.key, c.service_id) for c in reg.checks if c.service_id)
    ctx.acl.require_service_write(request, names)
    await regs.catalog_register(reg)
    return ok_true(request)


@routes.put("/v1/catalog/deregister")
async def deregister(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise FieldError("body", "expected a JSON object")
    dc = parse_datacenter(get_field(body, "Datacenter"), ctx.datacenter)
    refuse_peer_datacenter(ctx, dc, "Datacenter")
    raw_node = get_field(body, "Node")
    if raw_node in (None, ""):
        raise FieldError("Node", "required")
    node = node_name(raw_node, "Node")
    service_id = get_field(body, "ServiceID") or ""
    check_id = get_field(body, "CheckID") or ""
    if service_id:
        identifier(service_id, "ServiceID")
    if check_id:
        identifier(check_id, "CheckID")
    regs = ctx.registrations
    node_key = (dc, node.lower())
    if node_key == regs.agent_node.key:
        raise FieldError("Node", f"{node!r} is meshdns's own node; use /v1/agent/service/deregister")
    if node_key in regs.nodes:  # what is already gone needs no write permission: deregistering it changes nothing
        if check_id:
            check = regs.checks.get((*node_key, check_id))
            if check is not None and check.service_id:
                ctx.acl.require_service_write(request, regs.service_names([(*node_key, check.service_id)]))
            elif check is not None:
                ctx.acl.require_node_write(request)
        elif service_id:
            ctx.acl.require_service_write(request, regs.service_names([(*node_key, service_id)]))
        else:
            ctx.acl.require_node_write(request)
    await regs.catalog_deregister(node_key, service_id=service_id, check_id=check_id)
    return ok_true(request)


# -- reads --------------------------------------------------------------------------


@routes.get("/v1/catalog/datacenters")
async def datacenters(request: web.Request) -> web.Response:
    """Ours first, then every other one: peers (synced or not) and those zone files name."""
    peers = {p.datacenter for p in ctx_of(request).cfg.peers}

    def compute(snap: Snapshot):
        return [snap.datacenter] + sorted((snap.datacenters | peers) - {snap.datacenter})
    return await read(request, compute)


@routes.get("/v1/catalog/services")
async def services(request: web.Request) -> web.Response:
    """Service names and their tags; ?filter= selects instances (as catalog/service shows them) first."""
    ctx = ctx_of(request)
    dc = datacenter(request)
    wanted = entry_filter(request, CATALOG_SERVICE)
    views = ctx.views()

    def compute(snap: Snapshot):
        out = {}
        for (sdc, _), insts in sorted(snap.services.items()):
            if sdc != dc:
                continue
            if wanted:
                insts = [i for i in insts if wanted.matches(views.catalog_service(i, snap))]
            if insts:
                out[insts[0].service] = sorted({t for i in insts for t in i.tags})
        return out
    return await read(request, compute, filtered=True)


@routes.get("/v1/catalog/service/{name}")
async def service(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc, tags = datacenter(request), tags_filter(request)
    name = service_name(request.match_info["name"], "service")
    wanted = entry_filter(request, CATALOG_SERVICE)
    views = ctx.views()

    def compute(snap: Snapshot):
        return wanted.select(views.catalog_service(i, snap) for i in instances(snap, dc, name, tags))
    return await read(request, compute, filtered=True)


@routes.get("/v1/catalog/nodes")
async def nodes(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc = datacenter(request)
    wanted = entry_filter(request, NODE)
    views = ctx.views()

    def compute(snap: Snapshot):
        return wanted.select(views.node(n, None, snap) for (ndc, _), n in sorted(snap.nodes.items()) if ndc == dc)
    return await read(request, compute, filtered=True)


@routes.get("/v1/catalog/node/{node}")
async def node(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc = datacenter(request)
    name = node_name(request.match_info["node"], "node")
    wanted = entry_filter(request, SERVICE)
    views = ctx.views()

    def compute(snap: Snapshot):
        n = snap.node(name, dc)
        if n is None:
            return None  # Consul answers 200 with null for an unknown node
        services = {}
        for (sdc, _), insts in snap.services.items():
            if sdc != dc:
                continue
            for i in insts:
                if i.node.lower() == name.lower():
                    services[i.id] = views.service(i)
        return {"Node": views.node(n, None, snap),
                "Services": wanted.select_values(dict(sorted(services.items())))}
    return await read(request, compute, filtered=True)
