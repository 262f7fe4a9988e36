"""The aiohttp application: one route table per module, one error middleware, start/stop.

To add endpoints, write a module with a `routes = web.RouteTableDef()` and
list it in ROUTE_TABLES (or call HttpApi.add_routes before start).
"""
from __future__ import annotations

import logging
import socket
import ssl

from aiohttp import web

from ..config import Config
from ..sources.registration_model import NodeReg
from . import agent, catalog, config, health, metrics, status
from .common import CTX, ApiContext, errors
from .metrics import count_requests

log = logging.getLogger("meshdns.api")

ROUTE_TABLES = (agent.routes, catalog.routes, config.routes, health.routes, status.routes, metrics.routes)


def agent_node(cfg: Config) -> NodeReg:
    """meshdns's own node, which agent-API registrations live on (Consul's local agent node)."""
    host = socket.gethostname().split(".")[0].lower()
    name = host if host and all(c.isalnum() or c == "-" for c in host) and len(host) <= 63 else "meshdns"
    listen = cfg.http.listen[0]
    address = listen if listen not in ("", "0.0.0.0", "::", "localhost") else "127.0.0.1"
    return NodeReg(datacenter=cfg.datacenter, name=name, address=address, meta=(("meshdns", "agent"),))


class HttpApi:
    def __init__(self, ctx: ApiContext):
        self.ctx = ctx
        self.web = web.Application(middlewares=[count_requests, errors], client_max_size=ctx.cfg.http.max_body + 1)
        self.web[CTX] = ctx
        self.web[metrics.REGISTRY] = metrics.make_registry(ctx)
        for table in ROUTE_TABLES:
            self.web.add_routes(table)
        ctx.store.subscribe(ctx.watch)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add_routes(self, table: web.RouteTableDef) -> None:
        self.web.add_routes(table)

    def _ssl(self) -> ssl.SSLContext | None:
        http = self.ctx.cfg.http
        if not (http.tls_cert or http.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(http.tls_cert, http.tls_key)
        return context

    async def start(self) -> int:
        host, port = self.ctx.cfg.http.listen
        self._runner = web.AppRunner(self.web, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        tls = self._ssl()
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("http api listening on %s:%d%s%s", host, self.port, " (tls)" if tls else "",
                 ", acl enforced" if self.ctx.acl.enabled else "")
        return self.port

    async def close(self) -> None:
        self.ctx.watch.close()
        self.ctx.store.unsubscribe(self.ctx.watch)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
