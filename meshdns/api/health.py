"""/v1/health/*: instances with their checks, as Consul shows them."""
from __future__ import annotations

from aiohttp import web

from ..catalog.model import Health, Instance
from ..catalog.snapshot import Snapshot
from ..catalog.validate import FieldError, node_name, service_name
from .catalog import instances
from .common import ctx_of, datacenter, entry_filter, flag, read, tags_filter
from .shapes import CHECK, HEALTH_SERVICE, Views, check_json, status_name

routes = web.RouteTableDef()

STATES = ("any", "passing", "warning", "critical")


@routes.get("/v1/health/service/{name}")
async def service(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc, tags = datacenter(request), tags_filter(request)
    name = service_name(request.match_info["name"], "service")
    passing = flag(request, "passing")
    wanted = entry_filter(request, HEALTH_SERVICE)
    views = ctx.views()

    def compute(snap: Snapshot):
        return wanted.select([entry_json(inst, snap, views) for inst in instances(snap, dc, name, tags)
                              if not passing or inst.health is Health.PASSING])
    return await read(request, compute, filtered=True)


def entry_json(inst: Instance, snap: Snapshot, views: Views) -> dict:
    """One instance as /v1/health/service lists it (and a prepared query's execute answers)."""
    return {"Node": views.node_of(inst, snap), "Service": views.service(inst),
            "Checks": [check_json(v) for v in views.instance_checks(inst)]}


@routes.get("/v1/health/checks/{name}")
async def service_checks(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc = datacenter(request)
    name = service_name(request.match_info["name"], "service")
    wanted = entry_filter(request, CHECK)
    views = ctx.views()

    def compute(snap: Snapshot):
        return wanted.select(check_json(v) for inst in instances(snap, dc, name)
                             for v in views.service_checks(inst))
    return await read(request, compute, filtered=True)


@routes.get("/v1/health/node/{node}")
async def node_checks(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc = datacenter(request)
    name = node_name(request.match_info["node"], "node")
    wanted = entry_filter(request, CHECK)
    views = ctx.views()

    def compute(snap: Snapshot):
        out = [check_json(v) for v in views.node_checks(dc, name)]
        for (sdc, _), insts in sorted(snap.services.items()):
            if sdc == dc:
                out += [check_json(v) for i in insts if i.node.lower() == name.lower()
                        for v in views.service_checks(i)]
        return wanted.select(out)
    return await read(request, compute, filtered=True)


@routes.get("/v1/health/state/{state}")
async def state(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    dc = datacenter(request)
    wanted = request.match_info["state"].lower()
    if wanted not in STATES:
        raise FieldError("state", f"{wanted!r} is not one of {', '.join(STATES)}")
    chosen = entry_filter(request, CHECK)
    views = ctx.views()

    def compute(snap: Snapshot):
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
        return chosen.select(check_json(v) for v in found
                             if wanted == "any" or status_name(v.status) == wanted)
    return await read(request, compute, filtered=True)
