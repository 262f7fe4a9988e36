"""/v1/agent/*: services and checks registered with meshdns as the VMs' agent.

All agent registrations live on one node (meshdns's own). A service without
an Address gets the address the request came from, and without an ID the ID
"<name>-<address>", so VMs registering the same JSON do not replace each other.
"""
from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from .. import __version__
from ..catalog.model import Health
from ..catalog.validate import FieldError, client_ip, identifier
from ..health.spec import get_field
from ..sources.registration_model import parse_agent_check, parse_service, service_checks
from ..sources.registrations import NotFound
from .common import ctx_of, entry_filter, flag, json_response, ok, read_json
from .shapes import CHECK, SERVICE, agent_service_json, check_json

routes = web.RouteTableDef()



def peer_address(request: web.Request) -> str:
    return client_ip(request.remote or "")


def _service_key(request: web.Request):
    ctx = ctx_of(request)
    sid = identifier(request.match_info["id"], "service_id")
    return ctx.registrations.agent_key(sid)


def _check_key(request: web.Request):
    ctx = ctx_of(request)
    cid = identifier(request.match_info["id"], "check_id")
    return (*ctx.registrations.agent_node.key, cid)


def _owner_names(request: web.Request, check) -> list[str] | None:
    """Service names a check write touches; None = a node-level check."""
    if not check.service_id:
        return None
    svc = ctx_of(request).registrations.services.get((*check.node_key, check.service_id))
    return [svc.name] if svc is not None else []


def _require_check_write(request: web.Request, check) -> None:
    acl = ctx_of(request).acl
    names = _owner_names(request, check)
    if names is None:
        acl.require_node_write(request)
    else:
        acl.require_service_write(request, names)


# -- reads ------------------------------------------------------------------------


@routes.get("/v1/agent/self")
async def agent_self(request: web.Request) -> web.Response:
    """Consul's agent description: the tools that ask (py-consul's agent.self(), consul-template...) read
    Config.Datacenter, Config.NodeName and Config.Version, and Member."""
    ctx = ctx_of(request)
    ctx.acl.require_read(request)
    node = ctx.registrations.agent_node
    dc = ctx.datacenter
    return json_response(request, {
        "Config": {"Datacenter": dc, "PrimaryDatacenter": dc, "NodeName": node.name, "NodeID": node.node_id,
                   "Server": True, "Version": __version__, "Revision": "", "BuildDate": ""},
        "Member": {"Name": node.name, "Addr": node.address, "Port": ctx.http_port,
                   "Tags": {"dc": dc, "role": "consul", "build": __version__, "port": str(ctx.http_port)},
                   "Status": 1, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
                   "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4},
        "Meta": dict(node.meta),
    })


@routes.get("/v1/agent/services")
async def services(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_read(request)
    wanted = entry_filter(request, SERVICE)
    regs = ctx.registrations
    return json_response(request, wanted.select_values({s.id: agent_service_json(s)
                                                        for s in regs.services_on(regs.agent_node.key)}))


# not "register": GET /v1/agent/service/register is a wrong method (405), not an unknown service ID
@routes.get("/v1/agent/service/{id:(?!register$)[^{}/]+}")
async def service(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_read(request)
    svc = ctx.registrations.services.get(_service_key(request))
    if svc is None:
        raise NotFound(f"unknown service ID {request.match_info['id']!r}")
    return json_response(request, agent_service_json(svc))


@routes.get("/v1/agent/checks")
async def checks(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_read(request)
    wanted = entry_filter(request, CHECK)
    regs = ctx.registrations
    views = ctx.views()
    out = {}
    node_key = regs.agent_node.key
    for key, check in sorted(regs.checks.items()):
        if key[:2] == node_key:
            out[check.id] = check_json(views.registered_check(check))
    for svc in regs.services_on(node_key):
        if svc.maintenance is not None:
            out[f"_service_maintenance:{svc.id}"] = check_json(views.maintenance_check(svc))
    return json_response(request, wanted.select_values(out))


# -- service writes -------------------------------------------------------------------


@routes.put("/v1/agent/service/register")
async def register_service(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    replace_checks = flag(request, "replace-existing-checks")
    body = await read_json(request)
    if isinstance(body, dict) and len(body) == 1 and isinstance(get_field(body, "Service"), dict):
        body = get_field(body, "Service")  # the `consul services register` file shape
    regs = ctx.registrations
    svc = parse_service(body, field="", datacenter=regs.datacenter, node=regs.agent_node.name,
                        default_address=peer_address(request), default_id=True)
    new_checks = service_checks(body, svc, field="")
    old = regs.services.get(svc.key)
    ctx.acl.require_service_write(request, {svc.name} | ({old.name} if old else set()))
    if old is not None and old.maintenance is not None:
        svc = replace(svc, maintenance=old.maintenance)  # maintenance mode survives re-registration
    await regs.register_service(svc, new_checks, replace_checks=replace_checks)
    return ok(request)


@routes.put("/v1/agent/service/deregister/{id}")
async def deregister_service(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    key = _service_key(request)
    svc = ctx.registrations.services.get(key)
    if svc is None:
        raise NotFound(f"unknown service ID {key[2]!r}")
    ctx.acl.require_service_write(request, [svc.name])
    await ctx.registrations.deregister_service(key)
    return ok(request)


@routes.put("/v1/agent/service/maintenance/{id}")
async def maintenance(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    if "enable" not in request.query:
        raise FieldError("enable", "required (true or false)")
    enable = flag(request, "enable")
    key = _service_key(request)
    svc = ctx.registrations.services.get(key)
    if svc is None:
        raise NotFound(f"unknown service ID {key[2]!r}")
    ctx.acl.require_service_write(request, [svc.name])
    await ctx.registrations.set_maintenance(key, request.query.get("reason", "") if enable else None)
    return ok(request)


# -- check writes -----------------------------------------------------------------


@routes.put("/v1/agent/check/register")
async def register_check(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    regs = ctx.registrations
    check = parse_agent_check(await read_json(request), field="", datacenter=regs.datacenter,
                              node=regs.agent_node.name)
    _require_check_write(request, check)
    old = regs.checks.get(check.key)
    if old is not None:
        _require_check_write(request, old)
    await regs.register_check(check)
    return ok(request)


@routes.put("/v1/agent/check/deregister/{id}")
async def deregister_check(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    key = _check_key(request)
    check = ctx.registrations.checks.get(key)
    if check is None:
        raise NotFound(f"unknown check ID {key[2]!r}")
    _require_check_write(request, check)
    await ctx.registrations.deregister_check(key)
    return ok(request)


async def _ttl(request: web.Request, status: Health, output: str) -> web.Response:
    ctx = ctx_of(request)
    key = _check_key(request)
    check = ctx.registrations.checks.get(key)
    if check is None:
        raise NotFound(f"unknown check ID {key[2]!r}")
    _require_check_write(request, check)
    await ctx.registrations.update_ttl(key, status, output)
    return ok(request)


def _ttl_route(status: Health):
    async def handler(request: web.Request) -> web.Response:
        ctx_of(request).acl.require_token(request)
        return await _ttl(request, status, request.query.get("note", ""))
    return handler


routes.put("/v1/agent/check/pass/{id}")(_ttl_route(Health.PASSING))
routes.put("/v1/agent/check/warn/{id}")(_ttl_route(Health.WARNING))
routes.put("/v1/agent/check/fail/{id}")(_ttl_route(Health.CRITICAL))


@routes.put("/v1/agent/check/update/{id}")
async def update_check(request: web.Request) -> web.Response:
    ctx_of(request).acl.require_token(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise FieldError("body", "expected a JSON object")
    raw_status = get_field(body, "Status")
    if raw_status in (None, ""):
        raise FieldError("Status", "required (passing, warning or critical)")
    try:
        status = Health.parse(str(raw_status))
    except ValueError as exc:
        raise FieldError("Status", str(exc)) from None
    if status is Health.MAINTENANCE:
        raise FieldError("Status", "must be passing, warning or critical")
    output = get_field(body, "Output") or ""
    if not isinstance(output, str):
        raise FieldError("Output", "expected a string")
    return await _ttl(request, status, output)
