"""Config entries: Consul's `service-splitter` (PUT /v1/config, GET/DELETE /v1/config/service-splitter).

PUT also takes `service-intentions`, whose reads live in api/intentions.py.

GET also reports what is really served: which source's split is in force
(the last write wins across zone files, the API and Kubernetes), which
targets are healthy now, and the share each gets.
"""
from __future__ import annotations

from aiohttp import web

from ..catalog.model import Split
from ..catalog.rules import healthy, split_sides
from ..catalog.snapshot import Snapshot
from ..catalog.validate import FieldError, service_name
from ..health.spec import get_field
from ..sources.config_entries import KIND, splitter_json
from ..sources.intentions import KIND as INTENTIONS
from ..sources.registrations import NotFound
from .common import ctx_of, read, read_json

routes = web.RouteTableDef()


def effective(split: Split, snap: Snapshot, *, only_passing: bool) -> list[dict]:
    """The share of answers each target gets right now: the sides DNS answers with, from the same function."""
    return [{"Service": side.target.service, **({"ServiceSubset": side.target.tag} if side.target.tag else {}),
             **({"Datacenter": side.target.datacenter} if side.target.datacenter else {}),
             "HealthyInstances": len(healthy(side.instances, only_passing=only_passing)),  # 0 when failing open
             "Share": round(side.share, 6)}
            for side in split_sides(split, snap, only_passing=only_passing)]


def describe(split: Split, snap: Snapshot, *, only_passing: bool) -> dict:
    """The entry, its indexes (the store revisions of its first and last write, whatever its source), and
    what is served."""
    shares = effective(split, snap, only_passing=only_passing)
    return {**splitter_json(split), "CreateIndex": split.create_revision, "ModifyIndex": split.revision,
            "Meta": {"meshdns-source": split.source},
            "OnAllUnhealthy": split.on_all_unhealthy,
            "HealthyTargets": [s["Service"] + (":" + s["ServiceSubset"] if "ServiceSubset" in s else "")
                               + ("@" + s["Datacenter"] if "Datacenter" in s else "")
                               for s in shares if s["HealthyInstances"]],
            "EffectiveShares": shares}


@routes.put("/v1/config")
async def put_config(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_token(request)
    body = await read_json(request)
    # the ACL sees the name exactly as the entry will be stored ("NAME", "name" and "Name" are one key)
    entries = ctx.intentions if isinstance(body, dict) and get_field(body, "Kind") == INTENTIONS else ctx.config
    await entries.put(body, authorize=lambda name: ctx.acl.require_service_write(request, [name]))
    return web.Response(body=b"true", content_type="application/json")


def _kind(request: web.Request) -> None:
    if request.match_info["kind"] != KIND:
        raise FieldError("kind", f"{request.match_info['kind']!r} is not supported ({KIND!r}, {INTENTIONS!r})")


@routes.get("/v1/config/{kind}")
async def list_entries(request: web.Request) -> web.Response:
    _kind(request)
    only = ctx_of(request).cfg.dns.only_passing
    return await read(request, lambda snap: [describe(s, snap, only_passing=only)
                                                     for _, s in sorted(snap.splits.items())])


@routes.get("/v1/config/{kind}/{name}")
async def get_entry(request: web.Request) -> web.Response:
    _kind(request)
    name = service_name(request.match_info["name"], "name").lower()
    ctx = ctx_of(request)
    if name not in ctx.store.snapshot.splits:
        raise NotFound(f"config entry not found for {KIND!r} / {name!r}")
    only = ctx.cfg.dns.only_passing

    def compute(snap):
        split = snap.splits.get(name)
        return describe(split, snap, only_passing=only) if split else None

    return await read(request, compute)


@routes.delete("/v1/config/{kind}/{name}")
async def delete_entry(request: web.Request) -> web.Response:
    _kind(request)
    name = service_name(request.match_info["name"], "name").lower()
    ctx = ctx_of(request)
    ctx.acl.require_service_write(request, [name])
    await ctx.config.delete(name)
    return web.Response(body=b"true", content_type="application/json")
