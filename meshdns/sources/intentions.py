"""Intentions written through the API (Consul's `service-intentions` config entries), kept in the shared store.

A write is validated, then stored (see stored_entries: an invalid or failed
write leaves the old entry in force). Zone files can hold `[[intention]]`
tables too; per destination the newest write wins.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable, Mapping

from ..catalog import validate
from ..catalog.intentions import WILDCARD
from ..catalog.model import Intention, SourceState
from ..catalog.validate import FieldError
from ..health.spec import get_field
from .stored_entries import StoredEntries

log = logging.getLogger("meshdns.sources.intentions")

SOURCE = "intentions"
KIND = "service-intentions"
_TOP = ("Kind", "Name", "Sources", "Meta", "Namespace", "Partition", "CreateIndex", "ModifyIndex")
_SOURCE = ("Name", "Action", "Description", "Type", "Namespace", "Partition", "Precedence")
# Consul's precedence for an exact destination: an exact source beats the wildcard
PRECEDENCE = {True: 9, False: 8}


def parse_intentions(body: Any) -> Intention:
    """Consul's service-intentions JSON -> Intention. Only L4 sources (Action), not L7 Permissions."""
    if not isinstance(body, Mapping):
        raise FieldError("body", "expected a JSON object")
    validate.known_keys(body, _TOP, "")
    kind = get_field(body, "Kind")
    if kind != KIND:
        raise FieldError("Kind", f"{kind!r} is not {KIND!r}")
    name = get_field(body, "Name")
    if name == WILDCARD:
        raise FieldError("Name", "a wildcard destination is not supported (dns.intentions_default is the default)")
    sources = get_field(body, "Sources")
    if sources is None:
        sources = []
    if not isinstance(sources, list):
        raise FieldError("Sources", "expected a list of {Name, Action}")
    plain = []
    for i, raw in enumerate(sources):
        if not isinstance(raw, Mapping):
            raise FieldError(f"Sources[{i}]", "expected an object")
        if get_field(raw, "Permissions") is not None:
            raise FieldError(f"Sources[{i}].Permissions", "L7 permissions are not supported: give an Action")
        validate.known_keys(raw, _SOURCE, f"Sources[{i}]")
        plain.append({"name": get_field(raw, "Name"), "action": get_field(raw, "Action")})
    try:
        return validate.intention(name, plain, field="", source=SOURCE)
    except FieldError as exc:
        raise FieldError(_json_field(exc.field), exc.message) from None


def _json_field(field: str) -> str:
    """validate.intention's field names -> the JSON names the client sent (".sources[0].action" -> "Sources[0].Action")."""
    return re.sub(r"\b(sources|name|action)\b", lambda m: m.group(1).capitalize(), field.lstrip("."))


def intentions_json(entry: Intention) -> dict:
    return {"Kind": KIND, "Name": entry.name,
            "Sources": [{"Name": s.name, "Action": s.action, "Precedence": PRECEDENCE[s.name != WILDCARD],
                         "Type": "consul"} for s in entry.sources]}


class IntentionEntries(StoredEntries[Intention]):
    name = SOURCE
    kind = KIND

    @property
    def intentions(self) -> dict[str, Intention]:
        return self.entries

    def parse_record(self, key: str, record: Any) -> Intention:
        return parse_intentions(record["entry"])

    def state(self) -> SourceState:
        return SourceState(intentions=dict(self.entries))

    async def put(self, body: Any, *, authorize: Callable[[str], None] | None = None) -> Intention:
        """Parse, let `authorize(name)` refuse (ACL: the destination as parsed), store."""
        entry = parse_intentions(body)
        if authorize is not None:
            authorize(entry.name)
        stored = await self.store_entry(entry.name, {"entry": intentions_json(entry)}, entry)
        log.info("service-intentions %s set: %s", entry.name,
                 ", ".join(f"{s.name}={s.action}" for s in entry.sources) or "no sources")
        return stored
