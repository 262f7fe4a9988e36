"""/healthz (the process answers) and /readyz (which sources have synced, and their errors)."""
from __future__ import annotations

from aiohttp import web

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
    return json_response(request, {"ready": ready, "sources": sources}, status=200 if ready else 503)
