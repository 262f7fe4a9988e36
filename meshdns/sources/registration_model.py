"""Registrations as values, parsed from Consul's JSON shapes.

The same parsers read API request bodies and the records stored on disk (a
stored record is a Consul-shaped body with its defaults filled in), so a
registration is validated the same way whether it arrives over HTTP or is
loaded at start. Every error is a FieldError naming the field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ..catalog import validate
from ..catalog.model import Health, Instance, Node, Weights
from ..catalog.validate import FieldError
from ..health.spec import CheckSpec, get_field, parse_check

SOURCE = "registrations"

# Consul fields we accept and ignore (Connect, namespaces, round-tripped GET output).
_IGNORED_SERVICE = ("Proxy", "Connect", "Namespace", "Partition", "Token", "SocketPath", "Locality",
                    "ProxyDestination", "CreateIndex", "ModifyIndex", "ContentHash", "Datacenter", "PeerName")
SERVICE_KEYS = ("ID", "Name", "Service", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "Kind",
                "Check", "Checks", "EnableTagOverride", "Weights") + _IGNORED_SERVICE
CHECK_KEYS = ("ID", "CheckID", "Name", "Notes", "ServiceID", "Status", "DeregisterCriticalServiceAfter",
              "HTTP", "Method", "Header", "Body", "DisableRedirects", "TCP", "TTL", "Interval", "Timeout",
              "TLSSkipVerify", "TLSServerName", "SuccessBeforePassing", "FailuresBeforeCritical",
              "OutputMaxSize", "Namespace", "Partition", "Node", "Type", "FailuresBeforeWarning", "TCPUseTLS",
              # types we do not run: parse_check names them in its error
              "Args", "ScriptArgs", "Script", "Shell", "DockerContainerID", "GRPC", "GRPCUseTLS", "H2PING",
              "H2PingUseTLS", "UDP", "OSService", "AliasNode", "AliasService")
CATALOG_CHECK_KEYS = ("Node", "CheckID", "ID", "Name", "Notes", "Status", "Output", "ServiceID", "Definition",
                      "Type", "Namespace", "Partition", "ServiceName", "ServiceTags", "Interval", "Timeout",
                      "CreateIndex", "ModifyIndex", "ExposedPort", "PeerName")
CATALOG_KEYS = ("ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "Service", "Check",
                "Checks", "SkipNodeUpdate", "Namespace", "Partition", "Locality", "PeerName")
# accepted when empty/false/0 (Go clients send zero values), refused otherwise: we do not implement them
_UNSUPPORTED_IF_SET = ("FailuresBeforeWarning", "TCPUseTLS")


@dataclass(frozen=True, slots=True)
class NodeReg:
    datacenter: str
    name: str
    address: str
    meta: tuple[tuple[str, str], ...] = ()
    tagged_addresses: str = "{}"   # JSON object, echoed back as given
    node_id: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.datacenter, self.name.lower())

    def node(self) -> Node:
        return Node(name=self.name, address=self.address, datacenter=self.datacenter, meta=self.meta, source=SOURCE)

    def record(self) -> dict:
        return {"Datacenter": self.datacenter, "Node": self.name, "Address": self.address, "ID": self.node_id,
                "NodeMeta": dict(self.meta), "TaggedAddresses": json.loads(self.tagged_addresses)}


@dataclass(frozen=True, slots=True)
class ServiceReg:
    datacenter: str
    node: str
    id: str
    name: str
    address: str = ""
    port: int = 0
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    weights: Weights = field(default_factory=Weights)
    tagged_addresses: str = "{}"
    enable_tag_override: bool = False
    maintenance: str | None = None  # the reason, while in maintenance mode

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.datacenter, self.node.lower(), self.id)

    @property
    def service_key(self) -> tuple[str, str]:
        return (self.datacenter, self.name.lower())

    def instance(self, health: Health) -> Instance:
        return Instance(id=self.id, service=self.name, datacenter=self.datacenter, address=self.address,
                        port=self.port, node=self.node, tags=self.tags, meta=self.meta, weights=self.weights,
                        health=health, source=SOURCE)

    def definition(self) -> dict:
        return {"ID": self.id, "Name": self.name, "Tags": list(self.tags), "Address": self.address,
                "Port": self.port, "Meta": dict(self.meta),
                "Weights": {"Passing": self.weights.passing, "Warning": self.weights.warning},
                "TaggedAddresses": json.loads(self.tagged_addresses),
                "EnableTagOverride": self.enable_tag_override}

    def record(self) -> dict:
        return {"Datacenter": self.datacenter, "Node": self.node, "Maintenance": self.maintenance,
                "Service": self.definition()}


@dataclass(frozen=True, slots=True)
class CheckReg:
    """A check. `spec` set: meshdns runs it (agent checks). None: its status is pushed (catalog checks)."""

    datacenter: str
    node: str
    id: str
    name: str
    service_id: str = ""
    notes: str = ""
    spec: CheckSpec | None = None
    status: Health = Health.CRITICAL
    output: str = ""
    definition: str = "{}"  # JSON: the agent check definition, or a catalog check's Definition

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.datacenter, self.node.lower(), self.id)

    @property
    def node_key(self) -> tuple[str, str]:
        return (self.datacenter, self.node.lower())

    @property
    def type(self) -> str:
        return self.spec.kind if self.spec is not None else ""

    def record(self) -> dict:
        body = json.loads(self.definition)
        if self.spec is None:
            return {"Datacenter": self.datacenter, "Node": self.node, "Active": False,
                    "Check": {"CheckID": self.id, "Name": self.name, "Notes": self.notes, "ServiceID": self.service_id,
                              "Status": self.status.api_name, "Output": self.output, "Definition": body}}
        body.update({"CheckID": self.id, "Name": self.name, "ServiceID": self.service_id})
        body.pop("ID", None)
        return {"Datacenter": self.datacenter, "Node": self.node, "Active": True, "Check": body}


# -- parsing -------------------------------------------------------------------


def _sub(f: str, key: str) -> str:
    return f"{f}.{key}" if f else key


def _object(value: Any, f: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise FieldError(f or "body", "expected a JSON object")
    return value


def _json_object(value: Any, f: str) -> str:
    if value is None:
        return "{}"
    if not isinstance(value, Mapping):
        raise FieldError(f, "expected an object")
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_bool = validate.boolean


def _text(value: Any, f: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError(f, "expected a string")
    return value


def _status(value: Any, f: str, default: Health = Health.CRITICAL) -> Health:
    if value in (None, ""):
        return default
    try:
        status = Health.parse(str(value))
    except ValueError as exc:
        raise FieldError(f, str(exc)) from None
    if status is Health.MAINTENANCE:
        raise FieldError(f, "must be passing, warning or critical")
    return status


def parse_service(d: Any, *, field: str, datacenter: str, node: str, default_address: str = "",
                  default_id: bool = False) -> ServiceReg:
    """A service definition (agent shape `Name`, or catalog shape `Service` for the name).

    `default_id`: the ID defaults to "<name>-<address>" (unique across the VMs that share the
    agent API), else to the name (Consul's catalog rule: unique per node).
    """
    d = _object(d, field)
    validate.known_keys(d, SERVICE_KEYS, field)
    raw_name = get_field(d, "Name")
    if raw_name is None and isinstance(get_field(d, "Service"), str):
        raw_name = get_field(d, "Service")
    if raw_name is None:
        raise FieldError(_sub(field, "Name"), "required")
    name = validate.service_name(raw_name, _sub(field, "Name"))
    kind = get_field(d, "Kind")
    if kind not in (None, "", "typical"):
        raise FieldError(_sub(field, "Kind"), f"{kind!r} is not supported (only typical services)")
    address = validate.service_address(get_field(d, "Address"), _sub(field, "Address")) or default_address
    raw_id = get_field(d, "ID")
    if raw_id in (None, ""):
        raw_id = f"{name}-{address}" if default_id and address else name
    raw_port = get_field(d, "Port")
    return ServiceReg(
        datacenter=datacenter, node=node,
        id=validate.identifier(raw_id, _sub(field, "ID")),
        name=name, address=address,
        port=validate.port(0 if raw_port is None else raw_port, _sub(field, "Port")),
        tags=validate.tags(get_field(d, "Tags"), _sub(field, "Tags")),
        meta=validate.meta(get_field(d, "Meta"), _sub(field, "Meta")),
        weights=validate.weights(get_field(d, "Weights"), _sub(field, "Weights")),
        tagged_addresses=_json_object(get_field(d, "TaggedAddresses"), _sub(field, "TaggedAddresses")),
        enable_tag_override=_bool(get_field(d, "EnableTagOverride"), _sub(field, "EnableTagOverride")),
    )


def service_checks(d: Mapping, svc: ServiceReg, *, field: str) -> list[CheckReg]:
    """The `Check` / `Checks` of a service definition, with Consul's default IDs and names."""
    raw = []
    if get_field(d, "Check") is not None:
        raw.append((get_field(d, "Check"), _sub(field, "Check")))
    checks = get_field(d, "Checks")
    if checks is not None:
        if not isinstance(checks, list):
            raise FieldError(_sub(field, "Checks"), "expected a list of checks")
        raw.extend((c, f"{_sub(field, 'Checks')}[{i}]") for i, c in enumerate(checks))
    out, seen = [], set()
    for n, (c, f) in enumerate(raw, 1):
        default_id = f"service:{svc.id}" if len(raw) == 1 else f"service:{svc.id}:{n}"
        check = parse_agent_check(c, field=f, datacenter=svc.datacenter, node=svc.node, service_id=svc.id,
                                  default_id=default_id, default_name=f"Service '{svc.name}' check")
        if check.id in seen:
            raise FieldError(_sub(f, "CheckID"), f"duplicate check ID {check.id!r}")
        seen.add(check.id)
        out.append(check)
    return out


def parse_agent_check(d: Any, *, field: str, datacenter: str, node: str, service_id: str | None = None,
                      default_id: str = "", default_name: str = "") -> CheckReg:
    """A check meshdns runs (HTTP, TCP or TTL). `service_id` None: taken from the body."""
    d = _object(d, field)
    validate.known_keys(d, CHECK_KEYS, field)
    for key in _UNSUPPORTED_IF_SET:
        if get_field(d, key):
            raise FieldError(_sub(field, key), "not supported")
    spec = parse_check(d, field)
    name = _text(get_field(d, "Name"), _sub(field, "Name")) or default_name
    if not name:
        raise FieldError(_sub(field, "Name"), "required")
    raw_id = get_field(d, "CheckID")
    if raw_id in (None, ""):
        raw_id = get_field(d, "ID")
    if raw_id in (None, ""):
        raw_id = default_id or name
    check_id = validate.identifier(raw_id, _sub(field, "CheckID"))
    if service_id is None:
        sid = get_field(d, "ServiceID")
        service_id = validate.identifier(sid, _sub(field, "ServiceID")) if sid not in (None, "") else ""
    definition = {k: v for k, v in d.items() if str(k).lower().replace("_", "") not in ("id", "checkid", "serviceid")}
    return CheckReg(datacenter=datacenter, node=node, id=check_id, name=name, service_id=service_id,
                    notes=spec.notes, spec=spec, status=spec.initial,
                    definition=json.dumps(definition, sort_keys=True, separators=(",", ":")))


def parse_catalog_check(d: Any, *, field: str, datacenter: str, node: str, default_service: str = "") -> CheckReg:
    """A check whose status the caller pushes (consul-esm); its Definition is kept, not run."""
    d = _object(d, field)
    validate.known_keys(d, CATALOG_CHECK_KEYS, field)
    check_node = get_field(d, "Node")
    if check_node not in (None, "") and str(check_node).lower() != node.lower():
        raise FieldError(_sub(field, "Node"), f"{check_node!r} does not match the registered node {node!r}")
    raw_id = get_field(d, "CheckID")
    if raw_id in (None, ""):
        raw_id = get_field(d, "ID")
    name = _text(get_field(d, "Name"), _sub(field, "Name"))
    if raw_id in (None, ""):
        raw_id = name
    if raw_id in (None, ""):
        raise FieldError(_sub(field, "CheckID"), "required (or a Name)")
    sid = get_field(d, "ServiceID")
    service_id = validate.identifier(sid, _sub(field, "ServiceID")) if sid not in (None, "") else default_service
    definition = get_field(d, "Definition")
    return CheckReg(datacenter=datacenter, node=node, id=validate.identifier(raw_id, _sub(field, "CheckID")),
                    name=name or str(raw_id), service_id=service_id,
                    notes=_text(get_field(d, "Notes"), _sub(field, "Notes")),
                    status=_status(get_field(d, "Status"), _sub(field, "Status")),
                    output=_text(get_field(d, "Output"), _sub(field, "Output")),
                    definition=_json_object(definition, _sub(field, "Definition")))


def parse_node(d: Any, *, field: str, datacenter: str) -> NodeReg:
    d = _object(d, field)
    name = get_field(d, "Node")
    if name in (None, ""):
        raise FieldError(_sub(field, "Node"), "required")
    name = validate.node_name(name, _sub(field, "Node"))
    address = validate.address(get_field(d, "Address"), _sub(field, "Address"))
    if not address:
        raise FieldError(_sub(field, "Address"), "required")
    return NodeReg(datacenter=datacenter, name=name, address=address,
                   meta=validate.meta(get_field(d, "NodeMeta"), _sub(field, "NodeMeta")),
                   tagged_addresses=_json_object(get_field(d, "TaggedAddresses"), _sub(field, "TaggedAddresses")),
                   node_id=_text(get_field(d, "ID"), _sub(field, "ID")))


def parse_datacenter(value: Any, default: str, f: str = "Datacenter") -> str:
    if value in (None, ""):
        return default
    return validate.dns_label(value, f).lower()


@dataclass(frozen=True, slots=True)
class CatalogRegistration:
    node: NodeReg
    service: ServiceReg | None
    checks: tuple[CheckReg, ...]
    skip_node_update: bool


def parse_catalog_register(d: Any, *, datacenter: str) -> CatalogRegistration:
    """PUT /v1/catalog/register: a node, optionally one service, and checks whose status is pushed."""
    d = _object(d, "")
    validate.known_keys(d, CATALOG_KEYS, "")
    dc = parse_datacenter(get_field(d, "Datacenter"), datacenter)
    node = parse_node(d, field="", datacenter=dc)
    service = None
    raw_service = get_field(d, "Service")
    if raw_service is not None:
        service = parse_service(raw_service, field="Service", datacenter=dc, node=node.name)
        if get_field(raw_service, "Check") is not None or get_field(raw_service, "Checks") is not None:
            raise FieldError("Service.Check", "put catalog checks at the top level (Check / Checks)")
    raw_checks = []
    if get_field(d, "Check") is not None:
        raw_checks.append((get_field(d, "Check"), "Check"))
    more = get_field(d, "Checks")
    if more is not None:
        if not isinstance(more, list):
            raise FieldError("Checks", "expected a list of checks")
        raw_checks.extend((c, f"Checks[{i}]") for i, c in enumerate(more))
    checks, seen = [], set()
    for c, f in raw_checks:
        check = parse_catalog_check(c, field=f, datacenter=dc, node=node.name)
        if check.id in seen:
            raise FieldError(f"{f}.CheckID", f"duplicate check ID {check.id!r}")
        seen.add(check.id)
        checks.append(check)
    return CatalogRegistration(node=node, service=service, checks=tuple(checks),
                               skip_node_update=_bool(get_field(d, "SkipNodeUpdate"), "SkipNodeUpdate"))


# -- stored records ------------------------------------------------------------


def load_node(rec: Mapping) -> NodeReg:
    return parse_node(rec, field="node", datacenter=parse_datacenter(rec.get("Datacenter"), "dc1"))


def load_service(rec: Mapping) -> ServiceReg:
    svc = parse_service(rec.get("Service"), field="service", datacenter=rec["Datacenter"], node=rec["Node"])
    reason = rec.get("Maintenance")
    return svc if reason is None else replace(svc, maintenance=str(reason))


def load_check(rec: Mapping) -> CheckReg:
    if rec.get("Active"):
        return parse_agent_check(rec.get("Check"), field="check", datacenter=rec["Datacenter"], node=rec["Node"])
    return parse_catalog_check(rec.get("Check"), field="check", datacenter=rec["Datacenter"], node=rec["Node"])

