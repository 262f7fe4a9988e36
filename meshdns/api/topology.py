"""GET /v1/meshdns/topology?window=15m: who resolved whom over the last minutes.

The DNS path counts (source address, question name) per minute
(dns/topology.py); here, once per read, each address becomes its client
identity (the services at that address, else its /24 or /64) and each name the
service or split it asks for. Names that are no service or split of the
catalog (nodes, addresses, zone-file names, made-up names) are only counted
in `other`.
"""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Mapping

from aiohttp import web

from ..catalog.identity import Identities
from ..catalog.intentions import intention_allows
from ..catalog.snapshot import Snapshot
from ..catalog.validate import FieldError
from ..config import ConfigError, parse_duration
from ..dns import names
from .common import ctx_of, json_response

routes = web.RouteTableDef()

IDENTITIES = web.AppKey("topology_identities", Identities)


def parse_window(raw: str | None, *, max_minutes: int) -> int:
    """?window= as whole minutes, 1m up to the configured longest window (its default)."""
    if raw in (None, ""):
        return max_minutes
    try:
        seconds = parse_duration(raw, key="window")
    except ConfigError:
        raise FieldError("window", f"{raw!r} is not a duration like \"15m\"") from None
    if seconds % 60 or not 60 <= seconds <= max_minutes * 60:
        raise FieldError("window", f"{raw!r} must be a whole number of minutes from 1m to {max_minutes}m")
    return int(seconds // 60)


def target_of(qname: str, snap: Snapshot, domains: tuple[str, ...]) -> str | None:
    """The service or split of the catalog a question name asks for (`name.dc` for another
    datacenter's); None for any other name, so a flood of made-up names draws nothing."""
    domain = names.own_domain(qname, domains)
    if domain is None:
        return None
    lookup = names.parse_own(qname, domain)
    if not isinstance(lookup, names.ServiceLookup):
        return None
    dc = lookup.datacenter or snap.datacenter
    if (dc, lookup.service) not in snap.services and not (dc == snap.datacenter and lookup.service in snap.splits):
        return None
    return lookup.service if dc == snap.datacenter else f"{lookup.service}.{dc}"


def graph(counts: Mapping[tuple[str, str], int], snap: Snapshot, identities: Identities, *,
          domains: tuple[str, ...], minutes: int,
          allows: Callable[[frozenset[str], str], bool] | None = None) -> dict:
    """Nodes (services, splits, client networks) and edges (client -> name asked for, with counts);
    `other`: the queries for names that are no service or split of the catalog. With `allows`
    (intention views on DNS: the client's services, the destination), an edge whose queries DNS
    answered as denied is marked `denied`."""
    targets: dict[str, str | None] = {}
    edges: Counter = Counter()
    denied: set[tuple[str, str]] = set()
    addresses: dict[str, set[str]] = {}
    other = 0
    for (address, qname), n in counts.items():
        target = targets.get(qname, "")
        if target == "":
            target = targets[qname] = target_of(qname, snap, domains)
        if target is None:
            other += n
            continue
        client = identities(snap, address)
        refused = allows is not None and "." not in target and not allows(frozenset(client.services), target)
        for source in client.names:
            edges[(source, target)] += n
            addresses.setdefault(source, set()).add(address)
            if refused:
                denied.add((source, target))
    kinds: dict[str, str] = {}
    for source, target in edges:
        kinds[target] = "split" if target in snap.splits else "service"
    for source in addresses:
        kinds.setdefault(source, "client" if "/" in source else "service")
    return {
        "other": other,
        "nodes": [{"name": name, "kind": kind, "addresses": len(addresses.get(name, ()))}
                  for name, kind in sorted(kinds.items())],
        "edges": [{"source": source, "target": target, "count": n, "rate_per_min": round(n / minutes, 2),
                   "denied": (source, target) in denied}
                  for (source, target), n in sorted(edges.items(), key=lambda e: (-e[1], e[0]))],
    }


def install(app: web.Application) -> None:
    app[IDENTITIES] = Identities()


@routes.get("/v1/meshdns/topology")
async def topology(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ctx.acl.require_read(request)
    ui = ctx.cfg.ui
    minutes = parse_window(request.query.get("window"), max_minutes=int(ui.topology_window // 60))
    body = {"window": f"{minutes}m", "generated": datetime.fromtimestamp(time.time(), timezone.utc)
            .isoformat(timespec="seconds").replace("+00:00", "Z"), "enabled": ui.topology}
    counter = ctx.handler.topology
    if counter is None:
        return json_response(request, {**body, "minutes": 0, "dropped": 0, "other": 0, "nodes": [], "edges": []})
    counts, dropped, covered = counter.window(minutes)
    snap, dns_cfg = ctx.store.snapshot, ctx.cfg.dns

    def allows(services: frozenset[str], target: str) -> bool:
        return intention_allows(snap.intentions, services, target, default=dns_cfg.intentions_default)

    found = graph(counts, snap, request.app[IDENTITIES], domains=ctx.cfg.domains, minutes=covered,
                  allows=allows if dns_cfg.enforce_intentions else None)
    return json_response(request, {**body, "minutes": covered, "dropped": dropped, **found})
