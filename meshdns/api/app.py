"""The aiohttp application: one route table per module, one error middleware, start/stop.

To add endpoints, write a module with a `routes = web.RouteTableDef()` and
list it in ROUTE_TABLES (or call HttpApi.add_routes before start).
"""
from __future__ import annotations

import logging
import math
import socket
import ssl
import time

from aiohttp import web

from ..config import Config, ConfigError, HttpConfig
from ..sources.registration_model import NodeReg
from . import agent, catalog, config, health, intentions, metrics, query, status, topology, ui
from .common import CTX, ApiContext, consistent_writes, errors
from .metrics import count_requests
from .peers import read_only_peers

log = logging.getLogger("meshdns.api")

# intentions before config: its fixed /v1/config/service-intentions paths go before config's /v1/config/{kind}
ROUTE_TABLES = (agent.routes, catalog.routes, intentions.routes, config.routes, health.routes, status.routes,
                metrics.routes, query.routes, topology.routes, ui.routes)

# Request head bounds (aiohttp answers 400 beyond them): Consul clients send a handful of short headers.
MAX_LINE = 8192       # request line, and each header line
MAX_FIELD = 8192      # each header name or value
MAX_HEADERS = 100


class OncePer(logging.Filter):
    """Let one record through per `seconds`: a flood of malformed requests must not become a flood of logs."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self._last = -math.inf
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            self.suppressed += 1
            return False
        self._last = now
        return True


# aiohttp's own complaints about bad requests (bad request line, headers too long) go here; `meshdns serve`
# lets one per 10 s through (OncePer), so a flood of malformed requests is not a flood of logs
http_log = logging.getLogger("meshdns.api.http")


def tls_context(http: HttpConfig) -> ssl.SSLContext | None:
    """The API's TLS context, or None; a missing, unreadable or mismatched file is a ConfigError naming it."""
    if not (http.tls_cert or http.tls_key):
        return None
    for key, path in (("http.tls_cert", http.tls_cert), ("http.tls_key", http.tls_key)):
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(http.tls_cert, http.tls_key or None)
    except ssl.SSLError as exc:
        files = http.tls_cert + (f" and {http.tls_key}" if http.tls_key else "")
        raise ConfigError(f"http.tls_cert/http.tls_key: {files} are not a PEM certificate and its private key "
                          f"({exc.reason or exc})") from None
    return context


def agent_node(cfg: Config) -> NodeReg:
    """meshdns's own node, which agent-API registrations live on (Consul's local agent node): `node_name`, else
    the host name; replicas sharing a store share one node ("meshdns" unless `node_name` says otherwise)."""
    host = socket.gethostname().split(".")[0].lower()
    name = host if host and all(c.isalnum() or c == "-" for c in host) and len(host) <= 63 else "meshdns"
    if cfg.store.backend != "sqlite":
        name = "meshdns"
    name = cfg.node_name or name
    listen = cfg.http.listen[0]
    address = listen if listen not in ("", "0.0.0.0", "::", "localhost") else "127.0.0.1"
    return NodeReg(datacenter=cfg.datacenter, name=name, address=address, meta=(("meshdns", "agent"),))


class HttpApi:
    def __init__(self, ctx: ApiContext):
        self.ctx = ctx
        self.web = web.Application(middlewares=[count_requests, errors, read_only_peers, consistent_writes],
                                   client_max_size=ctx.cfg.http.max_body + 1)
        self.web[CTX] = ctx
        self.web[metrics.REGISTRY] = metrics.make_registry(ctx)
        for table in ROUTE_TABLES:
            self.web.add_routes(table)
        topology.install(self.web)
        ui.install(self.web)
        ctx.store.subscribe(ctx.watch)
        self._tls = tls_context(ctx.cfg.http)  # at build time: a bad file stops startup before anything listens
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add_routes(self, table: web.RouteTableDef) -> None:
        self.web.add_routes(table)

    async def start(self) -> int:
        http = self.ctx.cfg.http
        host, port = http.listen
        # keepalive_timeout also closes a connection whose request head is not complete in time
        # (aiohttp counts a half-received head as idle): slow-loris clients are cut off
        self._runner = web.AppRunner(self.web, access_log=None, shutdown_timeout=2.0, logger=http_log,
                                     max_line_size=MAX_LINE, max_field_size=MAX_FIELD, max_headers=MAX_HEADERS,
                                     keepalive_timeout=http.idle_timeout)
        await self._runner.setup()
        tls = self._tls
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        await site.start()
        self.port = self.ctx.http_port = self._runner.addresses[0][1]
        log.info("http api listening on %s:%d%s%s", host, self.port, " (tls)" if tls else "",
                 ", acl enforced" if self.ctx.acl.enabled else "")
        return self.port

    async def close(self) -> None:
        self.ctx.watch.close()
        self.ctx.store.unsubscribe(self.ctx.watch)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
