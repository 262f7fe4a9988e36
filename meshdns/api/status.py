"""/healthz (the process answers), /readyz (which sources have synced, and their errors; the store), and
Consul's /v1/status/leader and /v1/status/peers."""
from __future__ import annotations

from aiohttp import web

from ..catalog.validate import client_ip
from .common import ctx_of, json_response

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """503 until every required source has synced once; errors are listed but do not make us unready
    (a source keeps serving its last good state, e.g. a Kubernetes cluster that is unreachable
    shows connected: false and how old its last event is, while its last synced state is served).
    Peers (other datacenters) are listed with `required: false`: they never hold readiness back."""
    ctx = ctx_of(request)
    sources, ready = {}, True
    for name, status_of in sorted(ctx.readiness.items()):
        st = status_of()
        sources[name] = {"synced": st.synced, "errors": dict(st.errors), **st.details}
        if not st.required:
            sources[name]["required"] = False
        ready = ready and (st.synced or not st.required)
    body = {"ready": ready, "sources": sources}
    if ctx.records is not None:  # ready only after the first full read; a lost store does not unready it
        body["store"] = ctx.records.status()
        body["ready"] = ready = ready and ctx.records.ready
    return json_response(request, body, status=200 if ready else 503)


WILDCARDS = ("", "0.0.0.0", "::")


def own_address(request: web.Request) -> str:
    """"host:port" of this replica's API: the listen address, or, when it listens on every address, the one
    this request reached."""
    ctx = ctx_of(request)
    host = ctx.cfg.http.listen[0]
    if host in WILDCARDS:
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        host = client_ip(sockname[0]) if sockname else "127.0.0.1"
    return f"[{host}]:{ctx.http_port}" if ":" in host else f"{host}:{ctx.http_port}"


@routes.get("/v1/status/leader")
async def leader(request: web.Request) -> web.Response:
    """The replica that runs cluster-wide duties ("" while there is none); one server with its own store is
    its own leader."""
    replicas = ctx_of(request).replicas
    return json_response(request, replicas.leader_address if replicas.clustered else own_address(request))


@routes.get("/v1/status/peers")
async def peers(request: web.Request) -> web.Response:
    """The live replicas; one server with its own store is its only peer."""
    replicas = ctx_of(request).replicas
    return json_response(request, replicas.peers() if replicas.clustered else [own_address(request)])
