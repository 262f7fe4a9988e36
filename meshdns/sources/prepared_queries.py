"""Prepared queries (Consul's `/v1/query`), kept in the shared store and published into the catalog.

A body is parsed into a PreparedQuery (every error a FieldError naming the JSON
field), then stored as kind "query"; every replica (this one included)
publishes the stored record, so a refused or failed write changes nothing. A
query's CreateIndex and ModifyIndex are its record's create and mod revision.
"""
from __future__ import annotations

import logging
import re
import uuid
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from ..catalog import validate
from ..catalog.model import PreparedQuery, Revision, SourceState
from ..catalog.queries import ANY_VARIABLE, VARIABLE
from ..catalog.store import Store
from ..catalog.validate import FieldError
from ..config import ConfigError, parse_duration
from ..health.spec import get_field
from ..store.records import Records, Write
from .registrations import NotFound
from .stored_entries import StoredEntries

log = logging.getLogger("meshdns.sources.queries")

SOURCE = "queries"
KIND = "query"
TEMPLATE_TYPE = "name_prefix_match"

_TOP = ("ID", "Name", "Session", "Token", "Service", "DNS", "Template", "CreateIndex", "ModifyIndex")
_SERVICE = ("Service", "Failover", "IgnoreCheckIDs", "OnlyPassing", "Near", "Tags", "NodeMeta", "ServiceMeta",
            "Connect", "Peer", "SamenessGroup", "Namespace", "Partition")
_FAILOVER = ("NearestN", "Datacenters", "Targets")
_TEMPLATE = ("Type", "Regexp", "RemoveEmptyTags")
_NAME = re.compile(r"[a-z0-9_.-]{0,253}")
_TEMPLATE_TEXT = re.compile(r"[a-z0-9_-]*")


def _object(value: Any, field: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FieldError(field, "expected a JSON object")
    return value


def _strings(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FieldError(field, "expected a list of strings")
    return tuple(value)


def _unsupported(d: Mapping, names: Iterable[str], prefix: str) -> None:
    """Fields we accept only empty (Go clients send zero values): a set one would be silently ignored."""
    for name in names:
        value = get_field(d, name)
        is_set = bool(get_field(value, "Enabled")) if isinstance(value, Mapping) else bool(value)
        if is_set:
            raise FieldError(f"{prefix}{name}", "is not supported by meshdns")


def _template_text(text: str, field: str, groups: int, *, template: bool,
                   label: Callable[[str, str], str] | None) -> None:
    """A string that may hold ${...} in a template; outside templates `label` (a service or datacenter
    name rule from catalog.validate) checks it."""
    if not template:
        if label is not None:
            label(text, field)
        return
    for var in ANY_VARIABLE.findall(text):
        m = VARIABLE.fullmatch(var)
        if m is None:
            raise FieldError(field, f"unknown variable {var!r} (use ${{name.full}}, ${{name.prefix}}, "
                                    "${name.suffix} or ${match(N)})")
        if m.group(2) is not None and int(m.group(2)) > groups:
            raise FieldError(field, f"{var} needs Template.Regexp with at least {m.group(2)} group(s)")
    if label and not _TEMPLATE_TEXT.fullmatch(VARIABLE.sub("", text.lower())):
        raise FieldError(field, f"{text!r} is not a template of a DNS label")


def parse_query(body: Any, *, query_id: str) -> PreparedQuery:
    """Consul's prepared-query JSON -> PreparedQuery; the field of any error is named as the client sent it."""
    if not isinstance(body, Mapping):
        raise FieldError("body", "expected a JSON object")
    validate.known_keys(body, _TOP, "")
    _unsupported(body, ("Session",), "")
    name = get_field(body, "Name") or ""
    if not isinstance(name, str) or not _NAME.fullmatch(name.lower()):
        raise FieldError("Name", f"{name!r} is not a query name (letters, digits, '-', '_', '.')")
    tmpl = _object(get_field(body, "Template"), "Template")
    validate.known_keys(tmpl, _TEMPLATE, "Template")
    kind = get_field(tmpl, "Type") or ""
    if kind not in ("", TEMPLATE_TYPE):
        raise FieldError("Template.Type", f"{kind!r} is not {TEMPLATE_TYPE!r}")
    template = kind == TEMPLATE_TYPE
    regexp = get_field(tmpl, "Regexp") or ""
    if not isinstance(regexp, str):
        raise FieldError("Template.Regexp", "expected a string")
    groups = 0
    if regexp:
        if not template:
            raise FieldError("Template.Regexp", f"only a template (Template.Type = {TEMPLATE_TYPE!r}) has one")
        try:
            groups = re.compile(regexp).groups
        except re.error as exc:
            raise FieldError("Template.Regexp", f"invalid regular expression: {exc}") from None
    svc = _object(get_field(body, "Service"), "Service")
    validate.known_keys(svc, _SERVICE, "Service")
    _unsupported(svc, ("IgnoreCheckIDs", "Near", "Connect", "Peer", "SamenessGroup"), "Service.")
    service = get_field(svc, "Service")
    if not service:
        raise FieldError("Service.Service", "required: the service the query looks up")
    if not isinstance(service, str):
        raise FieldError("Service.Service", "expected a string")
    _template_text(service, "Service.Service", groups, template=template, label=validate.service_name)
    failover = _object(get_field(svc, "Failover"), "Service.Failover")
    validate.known_keys(failover, _FAILOVER, "Service.Failover")
    _unsupported(failover, ("Targets",), "Service.Failover.")
    nearest = get_field(failover, "NearestN") or 0
    if isinstance(nearest, bool) or not isinstance(nearest, int) or nearest < 0:
        raise FieldError("Service.Failover.NearestN", f"{nearest!r} is not a non-negative integer")
    datacenters = _strings(get_field(failover, "Datacenters"), "Service.Failover.Datacenters")
    for i, dc in enumerate(datacenters):
        _template_text(dc, f"Service.Failover.Datacenters[{i}]", groups, template=template,
                       label=validate.dns_label)
    tags = _strings(get_field(svc, "Tags"), "Service.Tags")
    for i, tag in enumerate(tags):
        if not tag and not template:
            raise FieldError(f"Service.Tags[{i}]", "must not be empty")
        _template_text(tag, f"Service.Tags[{i}]", groups, template=template, label=None)
    dns = _object(get_field(body, "DNS"), "DNS")
    validate.known_keys(dns, ("TTL",), "DNS")
    ttl = get_field(dns, "TTL")
    if ttl not in (None, ""):
        try:
            ttl = parse_duration(ttl, key="DNS.TTL")
        except ConfigError as exc:
            raise FieldError("DNS.TTL", str(exc).split(": ", 1)[-1]) from None
    return PreparedQuery(
        id=query_id, name=name.lower(), service=service if template else service.lower(), tags=tags,
        only_passing=validate.boolean(get_field(svc, "OnlyPassing"), "Service.OnlyPassing"),
        nearest_n=nearest, datacenters=tuple(d if template else d.lower() for d in datacenters),
        node_meta=validate.meta(get_field(svc, "NodeMeta"), "Service.NodeMeta"),
        service_meta=validate.meta(get_field(svc, "ServiceMeta"), "Service.ServiceMeta"),
        ttl=None if ttl in (None, "") else ttl, template=template, regexp=regexp,
        remove_empty_tags=validate.boolean(get_field(tmpl, "RemoveEmptyTags"), "Template.RemoveEmptyTags"))


def query_json(q: PreparedQuery) -> dict:
    """Consul's shape, as GET /v1/query returns it."""
    return {"ID": q.id, "Name": q.name, "Session": "", "Token": "",
            "Template": {"Type": TEMPLATE_TYPE if q.template else "", "Regexp": q.regexp,
                         "RemoveEmptyTags": q.remove_empty_tags},
            "Service": {"Service": q.service,
                        "Failover": {"NearestN": q.nearest_n, "Datacenters": list(q.datacenters)},
                        "OnlyPassing": q.only_passing, "IgnoreCheckIDs": None, "Near": "", "Tags": list(q.tags),
                        "NodeMeta": dict(q.node_meta), "ServiceMeta": dict(q.service_meta),
                        "Connect": {"Enabled": False}},
            "DNS": dns_json(q),
            "CreateIndex": q.create_index, "ModifyIndex": q.modify_index}


def dns_json(q: PreparedQuery) -> dict:
    return {"TTL": f"{q.ttl:g}s" if q.ttl is not None else ""}


def service_written(q: PreparedQuery) -> str:
    """The service name an ACL token must be able to write: a template's text before its first ${...}."""
    return q.service.split("${", 1)[0] if q.template else q.service


class PreparedQueries(StoredEntries[PreparedQuery]):
    name = SOURCE
    kind = KIND

    def __init__(self, store: Store, db: Records, *, new_id: Callable[[], str] = lambda: str(uuid.uuid4())):
        super().__init__(store, db)
        self.new_id = new_id

    @property
    def queries(self) -> dict[str, PreparedQuery]:
        return self.entries

    def parse_record(self, key: str, record: Any) -> PreparedQuery:
        return parse_query(record, query_id=key)

    def revised(self, entry: PreparedQuery, revision: Revision) -> PreparedQuery:
        return replace(entry, create_index=revision.create, modify_index=revision.mod)

    def state(self) -> SourceState:
        return SourceState(queries=dict(self.entries))

    def get(self, qid: str) -> PreparedQuery:
        q = self.queries.get(qid)
        if q is None:
            raise NotFound(f"prepared query {qid!r} not found")
        return q

    def _check_name(self, q: PreparedQuery) -> None:
        if not q.name and not q.template:
            return  # an unnamed static query is run by its ID only
        for other in self.queries.values():
            if other.id != q.id and other.name == q.name and (other.name or other.template):
                raise FieldError("Name", f"{q.name!r} is already the name of prepared query {other.id}")

    async def _write(self, q: PreparedQuery) -> PreparedQuery:
        """Store it; the query as stored (its indexes are its record's revisions)."""
        return await self.store_entry(q.id, query_json(q), q)

    async def create(self, body: Any, *, authorize: Callable[[list[str]], None]) -> PreparedQuery:
        q = parse_query(body, query_id=self.new_id())
        authorize([service_written(q)])
        self._check_name(q)
        q = await self._write(q)
        log.info("prepared query %s (%s) created for service %s", q.id, q.name or "unnamed", q.service)
        return q

    async def update(self, qid: str, body: Any, *, authorize: Callable[[list[str]], None]) -> PreparedQuery:
        old = self.get(qid)
        given = get_field(body, "ID") if isinstance(body, Mapping) else None
        if given not in (None, "", qid):
            raise FieldError("ID", f"{given!r} does not match the query in the URL ({qid})")
        q = parse_query(body, query_id=qid)
        authorize([service_written(old), service_written(q)])
        self._check_name(q)
        return await self._write(q)

    async def delete(self, qid: str, *, authorize: Callable[[list[str]], None]) -> None:
        old = self.get(qid)
        authorize([service_written(old)])
        await self.db.commit([Write(KIND, qid, None)])

