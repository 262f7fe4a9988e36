"""GET /metrics: Prometheus text, from our own CollectorRegistry.

The DNS hot path only bumps plain Counters; this collector folds them into
metric families when Prometheus scrapes, so answering a query never touches
prometheus-client.
"""
from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..dns.handler import QTYPE_NAMES
from .common import ApiContext, ctx_of

routes = web.RouteTableDef()

RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}


def qtype_name(qtype: int) -> str:
    return QTYPE_NAMES.get(qtype, f"TYPE{qtype}")


def rcode_name(rcode) -> str:
    return RCODE_NAMES.get(rcode, str(rcode)) if isinstance(rcode, int) else str(rcode)


class MeshdnsCollector(Collector):
    def __init__(self, ctx: ApiContext):
        self.ctx = ctx

    def collect(self):
        ctx = self.ctx
        counts, split_counts = ctx.handler.totals()
        queries = CounterMetricFamily("meshdns_dns_queries", "DNS queries answered, by qtype and rcode",
                                      labels=["qtype", "rcode"])
        for (qtype, rcode), n in sorted(counts.items(), key=str):
            queries.add_metric([qtype_name(qtype), rcode_name(rcode)], n)
        yield queries
        splits = CounterMetricFamily("meshdns_split_answers", "Answers for split names, by split and chosen target",
                                     labels=["split", "target"])
        for (split, target), n in sorted(split_counts.items(), key=str):
            splits.add_metric([str(split), str(target)], n)
        yield splits
        regs = ctx.registrations
        registered = GaugeMetricFamily("meshdns_registrations", "Registrations held in the durable store",
                                       labels=["kind"])
        registered.add_metric(["service"], len(regs.services))
        registered.add_metric(["check"], len(regs.checks))
        registered.add_metric(["node"], len(regs.nodes))
        yield registered
        checks = GaugeMetricFamily("meshdns_checks", "Health checks run by meshdns, by owner and status",
                                   labels=["owner", "status"])
        counts = ctx.runner.counts()
        for owner in sorted({o for o, _ in counts} | {regs.name}):
            for status in ("passing", "warning", "critical"):
                checks.add_metric([owner, status], counts.get((owner, status), 0))
        yield checks
        snap = ctx.store.snapshot
        yield GaugeMetricFamily("meshdns_catalog_version", "Catalog snapshot version (X-Consul-Index)",
                                value=snap.version)
        instances = GaugeMetricFamily("meshdns_catalog_instances", "Service instances in the catalog, by health",
                                      labels=["health"])
        by_health: dict[str, int] = {}
        for insts in snap.services.values():
            for i in insts:
                by_health[i.health.api_name] = by_health.get(i.health.api_name, 0) + 1
        for name in ("passing", "warning", "critical", "maintenance"):
            instances.add_metric([name], by_health.get(name, 0))
        yield instances
        yield GaugeMetricFamily("meshdns_http_blocking_queries", "Blocking queries waiting for a change",
                                value=ctx.watch.active)


def make_registry(ctx: ApiContext) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshdnsCollector(ctx))
    return registry


REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    ctx_of(request).acl.require_read(request)
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
