"""Consul's `service-intentions` config entries: GET /v1/config/service-intentions[/<name>], DELETE.

PUT goes through /v1/config with the other kinds. GET reports the entry in force
(the newest write across zone files and the API) and which source wrote it.
"""
from __future__ import annotations

from aiohttp import web

from ..catalog.model import Intention
from ..catalog.validate import service_name
from ..sources.intentions import KIND, intentions_json
from ..sources.registrations import NotFound
from .common import ctx_of, ok_true, read

routes = web.RouteTableDef()


def describe(entry: Intention) -> dict:
    """The entry, its indexes (the store revisions of its first and last write, whatever its source)."""
    return {**intentions_json(entry), "CreateIndex": entry.create_revision, "ModifyIndex": entry.revision,
            "Meta": {"meshdns-source": entry.source}}


@routes.get(f"/v1/config/{KIND}")
async def list_entries(request: web.Request) -> web.Response:
    return await read(request, lambda snap: [describe(e) for _, e in sorted(snap.intentions.items())])


@routes.get(f"/v1/config/{KIND}/{{name}}")
async def get_entry(request: web.Request) -> web.Response:
    name = service_name(request.match_info["name"], "name").lower()
    if name not in ctx_of(request).store.snapshot.intentions:
        raise NotFound(f"config entry not found for {KIND!r} / {name!r}")

    def compute(snap):
        entry = snap.intentions.get(name)
        return describe(entry) if entry else None

    return await read(request, compute)


@routes.delete(f"/v1/config/{KIND}/{{name}}")
async def delete_entry(request: web.Request) -> web.Response:
    name = service_name(request.match_info["name"], "name").lower()
    ctx = ctx_of(request)
    ctx.acl.require_service_write(request, [name])
    await ctx.intentions.delete(name)
    return ok_true(request)
