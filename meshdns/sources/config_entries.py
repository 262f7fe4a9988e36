"""Splits written through the API (Consul's `service-splitter` config entries), kept in the shared store.

A write is validated against the catalog as it is now (weights sum to 100,
targets exist, no split targets another split), then stored (see
stored_entries: an invalid or failed write leaves the old split in force).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from ..catalog import validate
from ..catalog.model import Split, SourceState
from ..catalog.validate import FieldError
from ..health.spec import get_field
from .stored_entries import StoredEntries

log = logging.getLogger("meshdns.sources.config")

SOURCE = "config"
KIND = "service-splitter"
_TOP = {"kind", "name", "splits", "meta", "namespace", "partition", "createindex", "modifyindex"}
_TARGET = {"weight", "service", "servicesubset", "tag", "namespace", "partition", "requestheaders",
           "responseheaders", "datacenter"}


def parse_splitter(body: Any, *, datacenter: str = "") -> Split:
    """Consul's service-splitter JSON -> Split. `ServiceSubset` (or `Tag`) restricts a target to a tag;
    `Datacenter` sends the target's share to a peer's copy of the service (ours is `datacenter`)."""
    if not isinstance(body, Mapping):
        raise FieldError("body", "expected a JSON object")
    extra = sorted(k for k in body if str(k).lower().replace("_", "") not in _TOP)
    if extra:
        raise FieldError(extra[0], "unknown field")
    kind = get_field(body, "Kind")
    if kind != KIND:
        raise FieldError("Kind", f"{kind!r} is not supported (only {KIND!r})")
    splits = get_field(body, "Splits")
    if not isinstance(splits, list) or not splits:
        raise FieldError("Splits", "expected a non-empty list")
    targets = []
    for i, raw in enumerate(splits):
        if not isinstance(raw, Mapping):
            raise FieldError(f"Splits[{i}]", "expected an object")
        extra = sorted(k for k in raw if str(k).lower().replace("_", "") not in _TARGET)
        if extra:
            raise FieldError(f"Splits[{i}].{extra[0]}", "unknown field")
        targets.append({"service": get_field(raw, "Service"), "weight": get_field(raw, "Weight") or 0,
                        "tag": get_field(raw, "ServiceSubset", "Tag") or "",
                        "datacenter": get_field(raw, "Datacenter") or ""})
    try:
        return validate.split(get_field(body, "Name"), targets, field="", source=SOURCE, percent=True,
                              local_datacenter=datacenter)
    except FieldError as exc:
        raise FieldError(_consul_field(exc.field), exc.message) from None


def _consul_field(field: str) -> str:
    """validate.split's field names -> the JSON names the client sent."""
    field = field.lstrip(".")
    field = field.replace("targets", "Splits").replace("service", "Service").replace("weight", "Weight")
    field = field.replace("tag", "ServiceSubset").replace("name", "Name")
    return field.replace("datacenter", "Datacenter")


def splitter_json(split: Split) -> dict:
    return {"Kind": KIND, "Name": split.name,
            "Splits": [{"Weight": t.weight, "Service": t.service, **({"ServiceSubset": t.tag} if t.tag else {}),
                        **({"Datacenter": t.datacenter} if t.datacenter else {})}
                       for t in split.targets]}


class ConfigEntries(StoredEntries[Split]):
    name = SOURCE
    kind = KIND

    @property
    def splits(self) -> dict[str, Split]:
        return self.entries

    def parse_record(self, key: str, record: Any) -> Split:
        return parse_splitter(record["entry"], datacenter=self.store.snapshot.datacenter)

    def state(self) -> SourceState:
        return SourceState(splits=dict(self.entries))

    def check_against_catalog(self, split: Split) -> None:
        """Targets must exist in their datacenter (ours, or a peer's imported copy); no target may be a
        split (other than itself, by tag or in another datacenter)."""
        snap = self.store.snapshot
        for i, t in enumerate(split.targets):
            if t.datacenter and t.datacenter not in snap.datacenters:
                raise FieldError(f"Splits[{i}].Datacenter", f"unknown datacenter {t.datacenter!r}")
            if not snap.services.get((t.datacenter or snap.datacenter, t.service)) and \
                    (t.service != split.name or t.datacenter):
                where = f" in datacenter {t.datacenter!r}" if t.datacenter else ""
                raise FieldError(f"Splits[{i}].Service", f"unknown target service {t.service!r}{where}")
        splits = dict(snap.splits)
        splits[split.name] = split
        loop = validate.split_loops(splits)
        if loop:
            raise FieldError("Splits", loop)

    async def put(self, body: Any, *, authorize: Callable[[str], None] | None = None) -> Split:
        """Parse, let `authorize(name)` refuse (ACL: the name as parsed, however the key was spelled),
        check against the catalog, store."""
        split = parse_splitter(body, datacenter=self.store.snapshot.datacenter)
        if authorize is not None:
            authorize(split.name)
        self.check_against_catalog(split)
        stored = await self.store_entry(split.name, {"entry": splitter_json(split)}, split)
        log.info("service-splitter %s set: %s", split.name,
                 ", ".join(f"{t.service}{':' + t.tag if t.tag else ''}={t.weight:g}" for t in split.targets))
        return stored
