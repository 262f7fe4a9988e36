"""Catalog values -> Consul's JSON shapes (CamelCase, as Consul's API returns them).

Instances from every source are shown the same way; registrations add their
real checks and tagged addresses, other sources get one check that carries
the health their source reports (Kubernetes readiness, a zone-file check).

Each entry carries its own CreateIndex/ModifyIndex: a registration's are its
record's create and mod revision in the store, so they survive restarts; an
entry of another source has the catalog versions at which it appeared and last
changed. Either way they change only when that entry does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..catalog.model import Health, Instance, Node, Revision
from ..catalog.snapshot import Snapshot
from ..catalog.store import Store
from ..health.runner import HealthRunner
from ..health.spec import CheckSpec
from ..sources.registration_model import CheckReg, ServiceReg
from ..sources.registrations import NODE as NODE_RECORD, SERVICE as SERVICE_RECORD, Registrations
from .filter import ListOf, MapOf

MAINTENANCE_CHECK = "_service_maintenance:"
MAINTENANCE_DEFAULT = "Maintenance mode is enabled for this service, but no reason was provided."


@dataclass(frozen=True, slots=True)
class CheckView:
    node: str
    check_id: str
    name: str
    status: Health
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] = ()
    notes: str = ""
    output: str = ""
    type: str = ""
    definition: str = "{}"
    index: Revision = Revision(0, 0)


def status_name(health: Health) -> str:
    """Maintenance shows as a critical check, as in Consul."""
    return "critical" if health is Health.MAINTENANCE else health.api_name


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def spec_definition(spec: CheckSpec) -> dict:
    d: dict[str, Any] = {"Interval": _duration(spec.interval) if spec.kind != "ttl" else "",
                         "Timeout": _duration(spec.timeout) if spec.kind != "ttl" else ""}
    if spec.kind == "http":
        d.update(HTTP=spec.target, Method=spec.method, TLSSkipVerify=spec.tls_skip_verify,
                 Header={k: [v for kk, v in spec.headers if kk == k] for k, _ in spec.headers})
    elif spec.kind == "tcp":
        d["TCP"] = spec.target
    else:
        d["TTL"] = _duration(spec.ttl)
    if spec.deregister_critical_after:
        d["DeregisterCriticalServiceAfter"] = _duration(spec.deregister_critical_after)
    return d


def indexes(index: Revision) -> dict:
    return {"CreateIndex": index.create, "ModifyIndex": index.mod}


def check_json(v: CheckView) -> dict:
    definition = json.loads(v.definition)
    return {"Node": v.node, "CheckID": v.check_id, "Name": v.name, "Status": status_name(v.status),
            "Notes": v.notes, "Output": v.output, "ServiceID": v.service_id, "ServiceName": v.service_name,
            "ServiceTags": list(v.service_tags), "Type": v.type,
            "Interval": definition.get("Interval", ""), "Timeout": definition.get("Timeout", ""),
            "ExposedPort": 0, "Definition": definition, **indexes(v.index)}


def meta_json(meta) -> dict:
    return dict(meta)


def node_json(node: Node | None, inst: Instance | None, snap: Snapshot, index: Revision, tagged: str = "{}") -> dict:
    if node is None:  # an instance with no node (address-only zone entries, pods): its own address
        name = inst.node if inst is not None else ""
        address = snap.instance_address(inst) if inst is not None else ""
        dc = inst.datacenter if inst is not None else snap.datacenter
        meta = ()
    else:
        name, address, dc, meta = node.name, node.address, node.datacenter, node.meta
    tagged_addresses = json.loads(tagged) or ({"lan": address, "wan": address} if address else {})
    return {"ID": "", "Node": name, "Address": address, "Datacenter": dc, "TaggedAddresses": tagged_addresses,
            "Meta": meta_json(meta), **indexes(index)}


def service_json(inst: Instance, reg: ServiceReg | None, index: Revision) -> dict:
    return {"Kind": "", "ID": inst.id, "Service": inst.service, "Tags": list(inst.tags),
            "Address": inst.address, "Meta": meta_json(inst.meta), "Port": inst.port,
            "Weights": {"Passing": inst.weights.passing, "Warning": inst.weights.warning},
            "EnableTagOverride": reg.enable_tag_override if reg else False,
            "TaggedAddresses": json.loads(reg.tagged_addresses) if reg else {},
            "Datacenter": inst.datacenter, **indexes(index)}


def agent_service_json(svc: ServiceReg) -> dict:
    d = svc.definition()
    return {"Kind": "", "ID": d.pop("ID"), "Service": d.pop("Name"), **d, "Datacenter": svc.datacenter}


def catalog_service_json(inst: Instance, n: dict, reg: ServiceReg | None, index: Revision) -> dict:
    """Consul's ServiceNode: the node (`n`, as node_json shows it) flattened, and the service."""
    return {"ID": n["ID"], "Node": n["Node"], "Address": n["Address"], "Datacenter": n["Datacenter"],
            "TaggedAddresses": n["TaggedAddresses"], "NodeMeta": n["Meta"],
            "ServiceKind": "", "ServiceID": inst.id, "ServiceName": inst.service,
            "ServiceTags": list(inst.tags), "ServiceAddress": inst.address,
            "ServiceTaggedAddresses": json.loads(reg.tagged_addresses) if reg else {},
            "ServiceWeights": {"Passing": inst.weights.passing, "Warning": inst.weights.warning},
            "ServiceMeta": meta_json(inst.meta), "ServicePort": inst.port,
            "ServiceEnableTagOverride": reg.enable_tag_override if reg else False, **indexes(index)}


# What ?filter= may select on each shape (Consul's selectors for the same endpoints).
WEIGHTS = {"Passing": int, "Warning": int}
SERVICE_ADDRESS = {"Address": str, "Port": int}
NODE = {"ID": str, "Node": str, "Address": str, "Datacenter": str, "TaggedAddresses": MapOf(str),
        "Meta": MapOf(str)}
SERVICE = {"Kind": str, "ID": str, "Service": str, "Tags": ListOf(str), "Address": str, "Meta": MapOf(str),
           "Port": int, "Weights": WEIGHTS, "EnableTagOverride": bool, "TaggedAddresses": MapOf(SERVICE_ADDRESS),
           "Datacenter": str}
CHECK = {"Node": str, "CheckID": str, "Name": str, "Status": str, "Notes": str, "Output": str, "ServiceID": str,
         "ServiceName": str, "ServiceTags": ListOf(str), "Type": str, "Interval": str, "Timeout": str,
         "ExposedPort": int}
CATALOG_SERVICE = {"ID": str, "Node": str, "Address": str, "Datacenter": str, "TaggedAddresses": MapOf(str),
                   "NodeMeta": MapOf(str), "ServiceKind": str, "ServiceID": str, "ServiceName": str,
                   "ServiceTags": ListOf(str), "ServiceAddress": str,
                   "ServiceTaggedAddresses": MapOf(SERVICE_ADDRESS), "ServiceWeights": WEIGHTS,
                   "ServiceMeta": MapOf(str), "ServicePort": int, "ServiceEnableTagOverride": bool}
HEALTH_SERVICE = {"Node": NODE, "Service": SERVICE, "Checks": ListOf(CHECK)}


class Views:
    """Looks up the registration details, checks and indexes behind catalog entries, and shows them."""

    def __init__(self, registrations: Registrations, runner: HealthRunner, store: Store):
        self.reg = registrations
        self.runner = runner
        self.store = store

    def registration(self, inst: Instance) -> ServiceReg | None:
        if inst.source != self.reg.name:
            return None
        return self.reg.services.get((inst.datacenter, inst.node.lower(), inst.id))

    def node_tagged(self, dc: str, node: str) -> str:
        n = self.reg.nodes.get((dc, node.lower()))
        return n.tagged_addresses if n is not None else "{}"

    # -- indexes

    def service_index(self, inst: Instance, reg: ServiceReg | None = None) -> Revision:
        reg = reg or self.registration(inst)
        stored = self.reg.revision_of(SERVICE_RECORD, reg.key) if reg is not None else None
        return stored or self.store.index_of(inst)

    def node_index(self, node: Node | None, inst: Instance | None) -> Revision:
        if node is None:   # an instance with no node: the node shown is the instance's own
            return self.store.index_of(inst) if inst is not None else Revision(0, 0)
        key = (node.datacenter, node.name.lower())
        if node.source == self.reg.name and key in self.reg.nodes:
            return self.reg.revision_of(NODE_RECORD, key) or self.store.index_of(node)
        return self.store.index_of(node)

    # -- shapes

    def node(self, node: Node | None, inst: Instance | None, snap: Snapshot) -> dict:
        """`node`, or the node an instance lives on (its own address when it has none)."""
        dc, name = (node.datacenter, node.name) if node is not None else (inst.datacenter, inst.node)
        return node_json(node, inst, snap, self.node_index(node, inst), self.node_tagged(dc, name))

    def node_of(self, inst: Instance, snap: Snapshot) -> dict:
        return self.node(snap.node(inst.node, inst.datacenter) if inst.node else None, inst, snap)

    def service(self, inst: Instance) -> dict:
        reg = self.registration(inst)
        return service_json(inst, reg, self.service_index(inst, reg))

    def catalog_service(self, inst: Instance, snap: Snapshot) -> dict:
        reg = self.registration(inst)
        return catalog_service_json(inst, self.node_of(inst, snap), reg, self.service_index(inst, reg))

    # -- checks

    def registered_check(self, c: CheckReg) -> CheckView:
        svc = self.reg.services.get((*c.node_key, c.service_id)) if c.service_id else None
        st = self.reg.check_state(c)
        definition = json.dumps(spec_definition(c.spec)) if c.spec is not None else c.definition
        return CheckView(node=c.node, check_id=c.id, name=c.name, status=st.status, service_id=c.service_id,
                         service_name=svc.name if svc else "", service_tags=svc.tags if svc else (),
                         notes=c.notes, output=st.output, type=c.type, definition=definition,
                         index=self.reg.check_revision(c) or Revision(0, 0))

    def maintenance_check(self, svc: ServiceReg) -> CheckView:
        """Maintenance mode is kept in the service's record: the check changes with it."""
        return CheckView(node=svc.node, check_id=MAINTENANCE_CHECK + svc.id, name="Service Maintenance Mode",
                         status=Health.CRITICAL, service_id=svc.id, service_name=svc.name,
                         service_tags=svc.tags, notes=svc.maintenance or MAINTENANCE_DEFAULT, type="maintenance",
                         index=self.reg.revision_of(SERVICE_RECORD, svc.key) or Revision(0, 0))

    def service_checks(self, inst: Instance) -> list[CheckView]:
        """The instance's own checks (no node checks)."""
        reg = self.registration(inst)
        if reg is not None:
            views = [self.registered_check(c) for c in self.reg.checks_of(inst.datacenter, inst.node, inst.id)]
            if reg.maintenance is not None:
                views.insert(0, self.maintenance_check(reg))
            return views
        # the check of another source is the health of its instance: it changes when the instance does
        index = self.store.index_of(inst)
        spec = self.runner.spec(inst.source, inst.id)
        st = self.runner.state(inst.source, inst.id)
        if spec is not None and st is not None:
            return [CheckView(node=inst.node, check_id=f"service:{inst.id}",
                              name=spec.name or f"Service '{inst.service}' check", status=st.status,
                              service_id=inst.id, service_name=inst.service, service_tags=inst.tags,
                              notes=spec.notes, output=st.output, type=spec.kind,
                              definition=json.dumps(spec_definition(spec)), index=index)]
        return [CheckView(node=inst.node, check_id=f"{inst.source}:{inst.id}", name=f"{inst.source} health",
                          status=inst.health, service_id=inst.id, service_name=inst.service,
                          service_tags=inst.tags, notes=f"health as reported by the {inst.source} source",
                          type=inst.source, index=index)]

    def node_checks(self, dc: str, node: str) -> list[CheckView]:
        if not node:
            return []
        return [self.registered_check(c) for c in self.reg.checks_of(dc, node, "")]

    def instance_checks(self, inst: Instance) -> list[CheckView]:
        """What /v1/health/service shows: node checks, then the service's checks."""
        return self.node_checks(inst.datacenter, inst.node) + self.service_checks(inst)
