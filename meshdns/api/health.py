"""/v1/health/*: instances with their checks, as Consul shows them."""
from __future__ import annotations

from aiohttp import web

from ..catalog.model import Health, Instance
from ..catalog.snapshot import Snapshot
from ..catalog.validate import FieldError, dns_label, node_name
from .catalog import instances
from .common import ctx_of, datacenter, flag, read, tags_filter
from .shapes import Views, check_json, node_json, service_json, status_name

routes = web.RouteTableDef()

STATES = ("any", "passing", "warning", "critical")


@routes.get("/v1/health/service/{name}")
async def service(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc, tags = datacenter(request), tags_filter(request)
    name = dns_label(request.match_info["name"], "service")
    passing = flag(request, "passing")
    views = Views(ctx.registrations, ctx.runner)

    def compute(snap: Snapshot, index: int):
        return [entry_json(inst, snap, views, index) for inst in instances(snap, dc, name, tags)
                if not passing or inst.health is Health.PASSING]
    return await read(request, compute)


def entry_json(inst: Instance, snap: Snapshot, views: Views, index: int) -> dict:
    """One instance as /v1/health/service lists it (and a prepared query's execute answers)."""
    node = snap.node(inst.node, inst.datacenter) if inst.node else None
    return {"Node": node_json(node, inst, snap, index, views.node_tagged(inst.datacenter, inst.node)),
            "Service": service_json(inst, views.registration(inst), index),
            "Checks": [check_json(v, index) for v in views.instance_checks(inst)]}


@routes.get("/v1/health/checks/{name}")
async def service_checks(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc = datacenter(request)
    name = dns_label(request.match_info["name"], "service")
    views = Views(ctx.registrations, ctx.runner)

    def compute(snap: Snapshot, index: int):
        return [check_json(v, index) for inst in instances(snap, dc, name) for v in views.service_checks(inst)]
    return await read(request, compute)


@routes.get("/v1/health/node/{node}")
async def node_checks(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc = datacenter(request)
    name = node_name(request.match_info["node"], "node")
    views = Views(ctx.registrations, ctx.runner)

    def compute(snap: Snapshot, index: int):
        out = [check_json(v, index) for v in views.node_checks(dc, name)]
        for (sdc, _), insts in sorted(snap.services.items()):
            if sdc == dc:
                out += [check_json(v, index) for i in insts if i.node.lower() == name.lower()
                        for v in views.service_checks(i)]
        return out
    return await read(request, compute)


@routes.get("/v1/health/state/{state}")
async def state(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc = datacenter(request)
    wanted = request.match_info["state"].lower()
    if wanted not in STATES:
        raise FieldError("state", f"{wanted!r} is not one of {', '.join(STATES)}")
    views = Views(ctx.registrations, ctx.runner)

    def compute(snap: Snapshot, index: int):
        found = []
        nodes_seen = set()
        for (sdc, _), insts in sorted(snap.services.items()):
            if sdc != dc:
                continue
            for inst in insts:
                found += views.service_checks(inst)
                if inst.node and inst.node.lower() not in nodes_seen:
                    nodes_seen.add(inst.node.lower())
                    found += views.node_checks(dc, inst.node)
        for (ndc, lname), n in sorted(ctx.registrations.all_nodes().items()):
            if ndc == dc and lname not in nodes_seen:
                found += views.node_checks(dc, n.name)
        return [check_json(v, index) for v in found if wanted == "any" or status_name(v.status) == wanted]
    return await read(request, compute)
