"""GET /metrics: Prometheus text, from our own CollectorRegistry.

The DNS hot path only bumps plain counters (DnsStats, ForwardStats); this
collector folds them, the workers' included, into metric families when
Prometheus scrapes, so answering a query never touches prometheus-client.
"""
from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..dns.handler import QTYPE_NAMES
from ..dns.stats import LATENCY_BUCKETS
from ..forward.client import LATENCY_BUCKETS as UPSTREAM_BUCKETS
from .common import CTX, ApiContext, ctx_of

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
        yield from self._dns()
        yield from self._forwarding()
        yield from self._catalog()
        yield from self._kubernetes()
        yield from self._store()
        yield from self._peers()
        yield from self._api()

    def _dns(self):
        stats = self.ctx.handler.totals()
        queries = CounterMetricFamily("meshdns_dns_queries", "DNS queries answered, by qtype, rcode and name kind",
                                      labels=["qtype", "rcode", "kind"])
        for (qtype, rcode, kind), n in sorted(stats.queries.items(), key=str):
            queries.add_metric([qtype_name(qtype), rcode_name(rcode), kind], n)
        yield queries
        buckets, running = [], 0
        for le, n in zip(LATENCY_BUCKETS, stats.latency):
            running += n
            buckets.append((repr(le), running))
        buckets.append(("+Inf", running + stats.latency[-1]))
        yield HistogramMetricFamily("meshdns_dns_response_seconds", "Time from query received to answer ready",
                                    buckets=buckets, sum_value=stats.latency_sum)
        splits = CounterMetricFamily("meshdns_split_answers", "Answers for split names, by split and chosen target",
                                     labels=["split", "target"])
        for (split, target), n in sorted(stats.splits.items(), key=str):
            splits.add_metric([str(split), str(target)], n)
        yield splits
        refused = CounterMetricFamily("meshdns_recursion_refused", "Queries for outside names refused, by reason",
                                      labels=["reason"])
        for reason in ("client", "no_upstream"):
            refused.add_metric([reason], stats.refused.get(reason, 0))
        yield refused
        locality = CounterMetricFamily("meshdns_locality_answers", "Answers to clients with a zone, by whether "
                                       "they kept to it", labels=["result"])
        for result in ("same_zone", "cross_zone"):
            locality.add_metric([result], stats.locality.get(result, 0))
        yield locality
        denied = CounterMetricFamily("meshdns_intention_denied", "Names answered NXDOMAIN because intentions deny "
                                     "the client the service, by source and destination",
                                     labels=["source", "destination"])
        for (source, destination), n in sorted(stats.denied.items()):
            denied.add_metric([source, destination], n)
        yield denied
        yield GaugeMetricFamily("meshdns_reply_cache_bytes", "Rendered replies kept for answering again "
                                "(every client class, transport and process)", value=stats.reply_bytes)
        yield GaugeMetricFamily("meshdns_reply_cache_classes", "Client classes with replies kept "
                                "(summed over processes)", value=stats.classes)

    def _forwarding(self):
        fwd = self.ctx.handler.forwarder
        if fwd is None:
            return
        totals = fwd.totals()
        st = totals.stats
        replies = CounterMetricFamily("meshdns_forward_replies", "Upstream exchanges, by upstream and outcome",
                                      labels=["upstream", "outcome"])
        for (upstream, outcome), n in sorted(st.replies.items(), key=str):
            replies.add_metric([upstream, str(outcome)], n)
        yield replies
        latency = HistogramMetricFamily("meshdns_forward_upstream_seconds", "Upstream round-trip time",
                                        labels=["upstream"])
        for upstream, count in sorted(st.latency_count.items()):
            buckets = [(repr(le), st.latency_buckets.get((upstream, le), 0)) for le in UPSTREAM_BUCKETS]
            latency.add_metric([upstream], buckets + [("+Inf", count)], st.latency_sum[upstream])
        yield latency
        cache = CounterMetricFamily("meshdns_forward_cache", "Forwarder cache results", labels=["result"])
        for result in ("hit", "miss", "stale", "shared"):
            cache.add_metric([result], st.cache.get(result, 0))
        yield cache
        yield GaugeMetricFamily("meshdns_forward_cache_entries",
                                "Replies held in the forwarder caches (one per process)",
                                value=totals.cache_entries)
        for name, counter in (("ignored", st.ignored), ("tcp_retries", st.tcp_retries)):
            family = CounterMetricFamily(f"meshdns_forward_{name}", {
                "ignored": "Upstream replies ignored (ID or question mismatch)",
                "tcp_retries": "Truncated UDP replies retried over TCP"}[name], labels=["upstream"])
            for upstream, n in sorted(counter.items()):
                family.add_metric([upstream], n)
            yield family

    def _catalog(self):
        ctx = self.ctx
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
        here = GaugeMetricFamily("meshdns_checks_run_here", "Health checks this replica runs (the others follow "
                                 "what their owner stores)", labels=["owner"])
        active = ctx.runner.active_counts()
        for owner in sorted(set(active) | {regs.name}):
            here.add_metric([owner], active.get(owner, 0))
        yield here
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
        by_source = GaugeMetricFamily("meshdns_catalog_source_instances", "Service instances each source contributes",
                                      labels=["source"])
        services = GaugeMetricFamily("meshdns_catalog_source_services", "Services each source contributes",
                                     labels=["source"])
        for source, (n_services, n_instances) in ctx.store.sizes().items():
            by_source.add_metric([source], n_instances)
            services.add_metric([source], n_services)
        yield by_source
        yield services

    def _store(self):
        records, replicas = self.ctx.records, self.ctx.replicas
        if records is None:
            return
        yield GaugeMetricFamily("meshdns_store_up", "Whether the shared store answers (its watch is connected)",
                                value=int(records.reflector.connected))
        yield GaugeMetricFamily("meshdns_store_revision", "The store revision this replica has applied",
                                value=records.revision)
        yield CounterMetricFamily("meshdns_store_relists", "Full reads of the store after the first (compaction, "
                                  "reconnection, the periodic safety net)", value=max(0, records.reflector.relists - 1))
        yield CounterMetricFamily("meshdns_store_repairs", "Changes only a safety-net full read found (a watch "
                                  "lost them)", value=records.reflector.repairs)
        yield GaugeMetricFamily("meshdns_replicas", "Live replicas sharing the store", value=len(replicas.peers()))
        yield GaugeMetricFamily("meshdns_leader", "1 on the replica that runs cluster-wide duties",
                                value=int(replicas.is_leader))

    def _kubernetes(self):
        sources = self.ctx.kubernetes
        if not sources:
            return
        families = {
            "events": CounterMetricFamily("meshdns_kubernetes_events", "Watch events received", labels=["cluster"]),
            "relists": CounterMetricFamily("meshdns_kubernetes_relists", "Full relists (410 Gone, reconnects)",
                                           labels=["cluster"]),
            "errors": CounterMetricFamily("meshdns_kubernetes_errors", "List/watch errors", labels=["cluster"]),
            "lag_seconds": GaugeMetricFamily("meshdns_kubernetes_lag_seconds",
                                             "Time from the last event received to its catalog update",
                                             labels=["cluster"]),
            "synced": GaugeMetricFamily("meshdns_kubernetes_synced", "1 once the cluster has been listed",
                                        labels=["cluster"]),
            "connected": GaugeMetricFamily("meshdns_kubernetes_connected", "1 while the watches are connected",
                                           labels=["cluster"]),
            "last_event_age": GaugeMetricFamily("meshdns_kubernetes_last_event_age_seconds",
                                                "Seconds since the last event (or bookmark)", labels=["cluster"]),
        }
        for source in sources:
            st = source.status()
            for key, family in families.items():
                value = st.get(key)
                if value is None:
                    continue
                family.add_metric([st["name"]], float(value))
        yield from families.values()

    def _peers(self):
        sources = self.ctx.peers
        if not sources:
            return
        labels = ["datacenter"]
        synced = GaugeMetricFamily("meshdns_peer_synced", "1 once every imported service was read from the peer",
                                   labels=labels)
        connected = GaugeMetricFamily("meshdns_peer_connected", "1 while every blocking query to the peer succeeds",
                                      labels=labels)
        age = GaugeMetricFamily("meshdns_peer_sync_age_seconds",
                                "Seconds since the imported copy was last known current (0 while the peer answers; "
                                "absent before the first sync)", labels=labels)
        errors = CounterMetricFamily("meshdns_peer_errors", "Failed requests to the peer", labels=labels)
        services = GaugeMetricFamily("meshdns_peer_services", "Services imported from the peer", labels=labels)
        instances = GaugeMetricFamily("meshdns_peer_instances", "Instances imported from the peer", labels=labels)
        for source in sources:
            dc = [source.peer.datacenter]
            synced.add_metric(dc, float(source.synced))
            connected.add_metric(dc, float(source.connected))
            seconds = source.sync_age()
            if seconds is not None:
                age.add_metric(dc, seconds)
            errors.add_metric(dc, source.errors)
            services.add_metric(dc, len(source.services))
            instances.add_metric(dc, sum(map(len, source.services.values())))
        yield from (synced, connected, age, errors, services, instances)

    def _api(self):
        requests = CounterMetricFamily("meshdns_http_requests", "HTTP API requests, by method, route and status",
                                       labels=["method", "route", "status"])
        for (method, route, status), n in sorted(self.ctx.requests.items(), key=str):
            requests.add_metric([method, route, str(status)], n)
        yield requests
        yield GaugeMetricFamily("meshdns_http_blocking_queries", "Blocking queries waiting for a change",
                                value=self.ctx.watch.active)


@web.middleware
async def count_requests(request: web.Request, handler) -> web.StreamResponse:
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource if request.match_info.route else None
        route = resource.canonical if resource is not None else "unmatched"
        request.app[CTX].requests[(request.method, route, status)] += 1


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
