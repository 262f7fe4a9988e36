"""Config entries: Consul's `service-splitter` (PUT /v1/config, GET/DELETE /v1/config/service-splitter).

GET also reports what is really served: which source's split is in force
(the last write wins across zone files, the API and Kubernetes), which
targets are healthy now, and the share each gets.
"""
from __future__ import annotations

from aiohttp import web

from ..catalog.model import Split
from ..catalog.snapshot import Snapshot
from ..catalog.validate import FieldError, dns_label
from ..dns.resolver import healthy
from ..sources.config_entries import KIND, splitter_json
from ..sources.registrations import NotFound
from .common import ctx_of, read, read_json

routes = web.RouteTableDef()


def effective(split: Split, snap: Snapshot, *, only_passing: bool) -> list[dict]:
    """The share of answers each target gets right now (unhealthy targets drop out)."""
    dc = snap.datacenter
    live = [(t, len(healthy(snap.services.get((t.datacenter or dc, t.service), ()), only_passing=only_passing,
                            tag=t.tag)))
            for t in split.targets if t.weight > 0]
    live = [(t, n) for t, n in live if n]
    if not live and split.on_all_unhealthy == "all":
        live = [(t, len(snap.services.get((t.datacenter or dc, t.service), ()))) for t in split.targets
                if t.weight > 0]
        live = [(t, n) for t, n in live if n]
    total = sum(t.weight for t, _ in live)
    return [{"Service": t.service, **({"ServiceSubset": t.tag} if t.tag else {}),
             **({"Datacenter": t.datacenter} if t.datacenter else {}), "HealthyInstances": n,
             "Share": round(t.weight / total, 6)} for t, n in live]


def describe(split: Split, snap: Snapshot, index: int, *, only_passing: bool) -> dict:
    shares = effective(split, snap, only_passing=only_passing)
    return {**splitter_json(split), "CreateIndex": index, "ModifyIndex": index,
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
    await ctx.config.put(body, authorize=lambda name: ctx.acl.require_service_write(request, [name]))
    return web.Response(body=b"true", content_type="application/json")


def _kind(request: web.Request) -> None:
    if request.match_info["kind"] != KIND:
        raise FieldError("kind", f"{request.match_info['kind']!r} is not supported (only {KIND!r})")


@routes.get("/v1/config/{kind}")
async def list_entries(request: web.Request) -> web.Response:
    _kind(request)
    only = ctx_of(request).cfg.dns.only_passing
    return await read(request, lambda snap, index: [describe(s, snap, index, only_passing=only)
                                                     for _, s in sorted(snap.splits.items())])


@routes.get("/v1/config/{kind}/{name}")
async def get_entry(request: web.Request) -> web.Response:
    _kind(request)
    name = dns_label(request.match_info["name"], "name").lower()
    ctx = ctx_of(request)
    if name not in ctx.store.snapshot.splits:
        raise NotFound(f"config entry not found for {KIND!r} / {name!r}")
    only = ctx.cfg.dns.only_passing

    def compute(snap, index):
        split = snap.splits.get(name)
        return describe(split, snap, index, only_passing=only) if split else None

    return await read(request, compute)


@routes.delete("/v1/config/{kind}/{name}")
async def delete_entry(request: web.Request) -> web.Response:
    _kind(request)
    name = dns_label(request.match_info["name"], "name").lower()
    ctx = ctx_of(request)
    ctx.acl.require_service_write(request, [name])
    await ctx.config.delete(name)
    return web.Response(body=b"true", content_type="application/json")
