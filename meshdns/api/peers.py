"""Peer datacenters are imported read-only: a write that names one is refused, naming where to write."""
from __future__ import annotations

from aiohttp import web

from ..catalog.validate import FieldError
from .common import ApiContext, ctx_of

READS = ("GET", "HEAD", "OPTIONS")


def refuse_peer_datacenter(ctx: ApiContext, dc: str, field: str) -> None:
    for peer in ctx.cfg.peers:
        if peer.datacenter == dc.lower():
            raise FieldError(field, f"{peer.datacenter!r} is a peer datacenter, imported read-only from "
                                    f"{peer.url}; write to that datacenter's own API")


@web.middleware
async def read_only_peers(request: web.Request, handler) -> web.StreamResponse:
    """`?dc=<peer>` on any write (Consul clients pass the target datacenter that way)."""
    dc = request.query.get("dc")
    if dc and request.method not in READS:
        refuse_peer_datacenter(ctx_of(request), dc, "dc")
    return await handler(request)
