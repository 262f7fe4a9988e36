"""Kubernetes objects -> catalog values (DESIGN §3). Pure: API dicts in, frozen values out.

Everything here works on the JSON dicts the API server sends (camelCase keys),
so it is table-tested without a cluster and the watch code never builds
client model objects. A bad annotation raises FieldError naming it; the
source then keeps the service's previous mapping (stale beats empty).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ...catalog import validate
from ...catalog.locality import ZONE_KEY
from ...catalog.model import Health, Instance, Meta, Node, ServiceKey, Split, Weights
from ...catalog.validate import FieldError

PREFIXES = ("meshdns.io/", "consul.hashicorp.com/")
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "meshdns"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"
MODES = ("endpoints", "clusterip", "nodeport", "loadbalancer")
# strconv.ParseBool, as consul-k8s reads its service-sync annotation
_FALSE = {"0", "f", "F", "false", "False", "FALSE"}


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The part of a [[kubernetes]] table the mapping needs."""

    cluster: str
    datacenter: str
    address_mode: str = "auto"
    nodeport_address: str = "internal"
    allow_namespaces: tuple[str, ...] = ("*",)
    deny_namespaces: tuple[str, ...] = ("kube-system", "kube-public")
    namespace_suffix: bool = False

    @property
    def source(self) -> str:
        return f"kubernetes:{self.cluster}"

    @classmethod
    def from_config(cls, kc: Any, *, default_datacenter: str) -> "ClusterSettings":
        return cls(cluster=kc.name, datacenter=(kc.datacenter or default_datacenter).lower(),
                   address_mode=kc.address_mode, nodeport_address=kc.nodeport_address,
                   allow_namespaces=tuple(kc.allow_namespaces), deny_namespaces=tuple(kc.deny_namespaces),
                   namespace_suffix=kc.namespace_suffix)


@dataclass(frozen=True, slots=True)
class Mapped:
    """What one Kubernetes Service contributes: instances under one catalog key, maybe a split."""

    key: ServiceKey
    instances: tuple[Instance, ...]
    split: Split | None = None
    uses_nodes: bool = False


# -- small readers ----------------------------------------------------------


def meta_of(obj: Mapping) -> Mapping:
    return obj.get("metadata") or {}


def object_key(obj: Mapping) -> tuple[str, str]:
    m = meta_of(obj)
    return (m.get("namespace") or "", m.get("name") or "")


def annotation(obj: Mapping, name: str) -> str | None:
    """meshdns.io/<name>, else consul.hashicorp.com/<name>."""
    ann = meta_of(obj).get("annotations") or {}
    for prefix in PREFIXES:
        value = ann.get(prefix + name)
        if value is not None:
            return value
    return None


def managed_by_meshdns(obj: Mapping) -> bool:
    return (meta_of(obj).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


def slice_service(slice_: Mapping) -> tuple[str, str] | None:
    """The (namespace, service) an EndpointSlice belongs to, from its service-name label."""
    m = meta_of(slice_)
    name = (m.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return (m.get("namespace") or "", name) if name else None


def namespace_allowed(namespace: str, settings: ClusterSettings) -> bool:
    if any(fnmatch.fnmatchcase(namespace, p) for p in settings.deny_namespaces):
        return False
    return any(fnmatch.fnmatchcase(namespace, p) for p in settings.allow_namespaces)


def should_sync(svc: Mapping, settings: ClusterSettings) -> bool:
    """Namespace allowed, not opted out, and not a Service meshdns itself wrote (never synced back)."""
    if managed_by_meshdns(svc):
        return False
    if not namespace_allowed(object_key(svc)[0], settings):
        return False
    return (annotation(svc, "service-sync") or "").strip() not in _FALSE


def catalog_name(svc: Mapping, settings: ClusterSettings) -> str:
    ns, name = object_key(svc)
    explicit = annotation(svc, "service-name")
    if explicit is not None:
        return validate.service_name(explicit.strip(), "annotation meshdns.io/service-name").lower()
    if settings.namespace_suffix:
        name = f"{name}-{ns}"
    field = "metadata.name" + (" + namespace suffix" if settings.namespace_suffix else "")
    return validate.service_name(name, field).lower()


def node_ready(node: Mapping) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def node_address(node: Mapping, how: str) -> str:
    """InternalIP / ExternalIP as `nodeport_address` asks; "" when the node has none."""
    found: dict[str, str] = {}
    for addr in (node.get("status") or {}).get("addresses") or ():
        found.setdefault(addr.get("type", ""), addr.get("address", ""))
    if how == "internal":
        return found.get("InternalIP", "")
    if how == "external":
        return found.get("ExternalIP", "")
    return found.get("ExternalIP") or found.get("InternalIP", "")


def address_mode(svc: Mapping, settings: ClusterSettings) -> str:
    """The effective mode: the annotation, else the cluster setting, with `auto` resolved by type.

    auto follows consul-k8s: ClusterIP (and headless) Services sync their
    endpoints (pod IPs), NodePort -> node IP + nodePort, LoadBalancer -> the
    ingress addresses. ExternalName Services are always a hostname.
    """
    spec = svc.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    if kind == "ExternalName":
        return "externalname"
    mode = settings.address_mode
    override = annotation(svc, "address-mode")
    if override is not None:
        mode = override.strip().lower()
        if mode not in MODES + ("auto",):
            raise FieldError("annotation meshdns.io/address-mode",
                             f"{override!r} is not one of auto, endpoints, clusterip, nodeport, loadbalancer")
    if mode == "auto":
        mode = {"NodePort": "nodeport", "LoadBalancer": "loadbalancer"}.get(kind, "endpoints")
    if mode == "clusterip" and _headless(spec):
        mode = "endpoints"  # a headless Service has no virtual IP; its pods are the addresses
    return mode


def _headless(spec: Mapping) -> bool:
    return spec.get("clusterIP") in (None, "", "None")


# -- annotations with values ---------------------------------------------------


def tags(svc: Mapping) -> tuple[str, ...]:
    out = ["k8s"]
    ann = meta_of(svc).get("annotations") or {}
    for prefix in PREFIXES:
        for tag in (ann.get(prefix + "service-tags") or "").split(","):
            tag = tag.strip()
            if tag and tag not in out:
                out.append(tag)
    return validate.tags(out, "annotation meshdns.io/service-tags")


def meta(svc: Mapping) -> tuple[tuple[str, str], ...]:
    ns, name = object_key(svc)
    values = {}
    ann = meta_of(svc).get("annotations") or {}
    for prefix in reversed(PREFIXES):  # meshdns.io wins over the consul spelling
        for key, value in ann.items():
            if key.startswith(prefix + "service-meta-") and len(key) > len(prefix + "service-meta-"):
                values[key[len(prefix + "service-meta-"):]] = value
    values.update({"k8s-namespace": ns, "k8s-service": name, "external-source": "kubernetes"})
    return validate.meta(values, "annotation meshdns.io/service-meta-*")


def weights(svc: Mapping) -> Weights:
    """`meshdns.io/service-weight`: "10" (the passing weight) or "passing=10,warning=1"."""
    text = annotation(svc, "service-weight")
    if text is None:
        return Weights()
    field = "annotation meshdns.io/service-weight"
    text = text.strip()
    if text.isdigit():
        return validate.weights({"passing": int(text)}, field)
    parts = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise FieldError(field, f"{text!r} is not a weight (\"10\" or \"passing=10,warning=1\")")
        parts[key.strip()] = int(value)
    return validate.weights(parts, field)


def split(svc: Mapping, name: str, *, source: str) -> Split | None:
    """`meshdns.io/split: "legacy-billing=90,billing:v2=10"` (service[:tag]=weight) -> a Split named `name`."""
    text = annotation(svc, "split")
    if text is None or not text.strip():
        return None
    field = "annotation meshdns.io/split"
    targets = []
    for item in text.split(","):
        if not item.strip():
            continue
        target, sep, weight = item.partition("=")
        try:
            number = float(weight)
        except ValueError:
            number = None
        if not sep or number is None:
            raise FieldError(field, f"{item.strip()!r} is not service[:tag]=weight")
        service, _, tag = target.strip().partition(":")
        targets.append({"service": service.strip(), "tag": tag.strip(), "weight": number})
    return validate.split(name, targets, field=field, source=source)


# -- ports -------------------------------------------------------------------


def _port_choice(svc: Mapping) -> tuple[Mapping | None, int | None]:
    """(the Service port entry, a literal port number) picked by meshdns.io/service-port, else the first."""
    ports = (svc.get("spec") or {}).get("ports") or []
    wanted = annotation(svc, "service-port")
    if wanted is None or not wanted.strip():
        return (ports[0] if ports else None), None
    wanted = wanted.strip()
    if wanted.isdigit():
        n = int(wanted)
        if not 0 < n <= 65535:
            raise FieldError("annotation meshdns.io/service-port", f"{wanted!r} is not a port (1-65535)")
        for key in ("port", "targetPort", "nodePort"):
            entry = next((p for p in ports if p.get(key) == n), None)
            if entry is not None:
                return entry, n
        return None, n
    entry = next((p for p in ports if p.get("name") == wanted), None)
    if entry is None:
        names = ", ".join(repr(p.get("name") or "") for p in ports) or "none"
        raise FieldError("annotation meshdns.io/service-port", f"the Service has no port named {wanted!r} ({names})")
    return entry, None


def _slice_port(slice_: Mapping, entry: Mapping | None, literal: int | None) -> int:
    """The pods' port for the chosen Service port: the slice port of the same name."""
    ports = slice_.get("ports") or []
    if entry is not None:
        name = entry.get("name") or ""
        for p in ports:
            if (p.get("name") or "") == name and p.get("port"):
                return p["port"]
    if literal is not None:
        return literal
    return next((p["port"] for p in ports if p.get("port")), 0)


# -- the mapping -------------------------------------------------------------


def _ready(endpoint: Mapping) -> bool:
    # A nil `ready` is to be read as true (discovery.k8s.io/v1 EndpointConditions).
    return (endpoint.get("conditions") or {}).get("ready") is not False


def endpoint_addresses(slices: Iterable[Mapping], entry, literal, *, publish_not_ready: bool):
    """{(address, port): (health, nodeName, zone)} over all slices, de-duplicated (ready anywhere wins)."""
    out: dict[tuple[str, int], tuple[Health, str, str]] = {}
    for sl in slices:
        kind = sl.get("addressType") or "IPv4"
        port = _slice_port(sl, entry, literal)
        for ep in sl.get("endpoints") or ():
            addrs = ep.get("addresses") or ()
            if not addrs:
                continue
            # addresses are fungible; consumers may use the first (EndpointSlice API)
            try:
                addr = validate.address(addrs[0], "endpoints.addresses") if kind == "FQDN" else \
                    validate.ip_address(addrs[0], "endpoints.addresses")
            except FieldError:
                continue
            health = Health.PASSING if publish_not_ready or _ready(ep) else Health.CRITICAL
            prev = out.get((addr, port))
            if prev is None or health < prev[0]:
                out[(addr, port)] = (health, ep.get("nodeName") or "", ep.get("zone") or "")
    return out


def map_service(svc: Mapping, slices: Iterable[Mapping], nodes: Mapping[str, Mapping],
                settings: ClusterSettings) -> Mapped | None:
    """One Service (+ its EndpointSlices, + Nodes for nodeport) -> its catalog contribution.

    None when the Service is not synced (namespace denied, opted out, or written by meshdns).
    """
    if not should_sync(svc, settings):
        return None
    ns, k8s_name = object_key(svc)
    spec = svc.get("spec") or {}
    name = catalog_name(svc, settings)
    mode = address_mode(svc, settings)
    entry, literal = _port_choice(svc)
    slices = list(slices)
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    common = dict(service=name, datacenter=settings.datacenter, tags=tags(svc), meta=meta(svc),
                  weights=weights(svc), source=settings.source)
    the_split = split(svc, name, source=settings.source)

    def make(address: str, port: int, health: Health, node: str = "", zone: str = "") -> Instance:
        iid = f"k8s-{settings.cluster}-{ns}-{k8s_name}-{address}-{port}"
        if zone:  # the endpoint's own zone; without one, the zone of its node (a catalog node) applies
            return Instance(id=iid, address=address, port=port, node=node, health=health,
                            **{**common, "meta": _with_zone(common["meta"], zone)})
        return Instance(id=iid, address=address, port=port, node=node, health=health, **common)

    endpoints = endpoint_addresses(slices, entry, literal, publish_not_ready=publish_not_ready)
    service_health = Health.PASSING if any(h is Health.PASSING for h, *_ in endpoints.values()) else Health.CRITICAL
    instances: list[Instance] = []
    uses_nodes = False

    if mode == "externalname":
        host = validate.address((spec.get("externalName") or "").strip(), "spec.externalName")
        if host:
            port = (entry or {}).get("port") or literal or 0
            instances.append(make(host, port, Health.PASSING))
    elif mode == "endpoints":
        for (addr, port), (health, node, zone) in sorted(endpoints.items()):
            instances.append(make(addr, port, health, node, zone))
    elif mode == "clusterip":
        port = (entry or {}).get("port") or literal or 0
        ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
        for ip in ips:
            instances.append(make(validate.ip_address(ip, "spec.clusterIP"), port, service_health))
    elif mode == "loadbalancer":
        port = (entry or {}).get("port") or literal or 0
        for ing in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ():
            addr = ing.get("ip") or ing.get("hostname") or ""
            if addr:
                instances.append(make(validate.address(addr, "status.loadBalancer.ingress"), port, service_health))
    elif mode == "nodeport":
        uses_nodes = True
        port = (entry or {}).get("nodePort") or 0
        if not port:
            if entry is None and literal is not None:
                port = literal
            else:
                raise FieldError("spec.ports", f"address mode nodeport, but the {spec.get('type') or 'ClusterIP'} "
                                 "Service has no nodePort")
        local_only = spec.get("externalTrafficPolicy") == "Local"
        pod_nodes = {node for (h, node, _) in endpoints.values() if h is Health.PASSING}
        for node_name in sorted(nodes):
            node = nodes[node_name]
            if not node_ready(node) or (local_only and node_name not in pod_nodes):
                continue
            addr = node_address(node, settings.nodeport_address)
            if addr:
                instances.append(make(validate.ip_address(addr, "node address"), port, service_health, node_name))
    return Mapped(key=(settings.datacenter, name), instances=tuple(instances), split=the_split,
                  uses_nodes=uses_nodes)


def _with_zone(meta: Meta, zone: str) -> Meta:
    return tuple(sorted({**dict(meta), ZONE_KEY: zone}.items()))


def catalog_node(node: Mapping, settings: ClusterSettings) -> Node | None:
    """A Node as a catalog node (`<name>.node.consul`): its InternalIP, and its zone label as meta `zone`.

    None for a Node without an InternalIP (nothing to answer with)."""
    name = meta_of(node).get("name") or ""
    try:
        name = validate.node_name(name, "metadata.name")
        address = validate.ip_address(node_address(node, "internal"), "status.addresses")
    except FieldError:
        return None
    meta = {"external-source": "kubernetes"}
    zone = (meta_of(node).get("labels") or {}).get(ZONE_LABEL)
    if zone:
        meta[ZONE_KEY] = zone
    return Node(name=name, address=address, datacenter=settings.datacenter, meta=tuple(sorted(meta.items())),
                source=settings.source)


def node_view(node: Mapping | None, how: str) -> tuple[bool, str] | None:
    """The only part of a Node the mapping reads: node status heartbeats must not rebuild services."""
    if node is None:
        return None
    return node_ready(node), node_address(node, how)
