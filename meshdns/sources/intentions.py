"""Intentions written through the API (Consul's `service-intentions` config entries), kept durably.

A write is validated, committed to SQLite, and only then published, so an
invalid or failed write leaves the old entry in force. Zone files can hold
`[[intention]]` tables too; per destination the newest write wins.
"""
from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any, Callable, Mapping

from ..catalog import validate
from ..catalog.intentions import WILDCARD
from ..catalog.model import Intention, SourceState
from ..catalog.store import Store
from ..catalog.validate import FieldError
from ..health.spec import get_field
from .registrations import NotFound
from .sqlite_store import RecordStore, Write
from .status import SourceStatus

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


class IntentionEntries:
    name = SOURCE

    def __init__(self, store: Store, db: RecordStore):
        self.store = store
        self.db = db
        self.intentions: dict[str, Intention] = {}

    def load(self) -> None:
        for name, record in self.db.load(KIND).items():
            try:
                self.intentions[name] = self._revised(parse_intentions(record["entry"]))
            except (FieldError, KeyError, TypeError, ValueError) as exc:
                log.error("stored service-intentions %r is unreadable and was skipped: %s", name, exc)
        self._publish()

    def _revised(self, entry: Intention) -> Intention:
        """Its revisions are its record's: every PUT is a new write (last write wins against zone files)."""
        revision = self.db.revision_of(KIND, entry.name)
        return replace(entry, revision=revision.mod, create_revision=revision.create)

    def _publish(self) -> None:
        self.store.publish(SOURCE, SourceState(intentions=dict(self.intentions)))

    async def put(self, body: Any, *, authorize: Callable[[str], None] | None = None) -> Intention:
        """Parse, let `authorize(name)` refuse (ACL: the destination as parsed), write, publish."""
        entry = parse_intentions(body)
        if authorize is not None:
            authorize(entry.name)
        record = {"entry": intentions_json(entry)}

        def apply() -> None:
            self.intentions[entry.name] = self._revised(entry)
            self._publish()

        await self.db.commit([Write(KIND, entry.name, record)], apply=apply)
        log.info("service-intentions %s set: %s", entry.name,
                 ", ".join(f"{s.name}={s.action}" for s in entry.sources) or "no sources")
        return self.intentions[entry.name]

    async def delete(self, name: str) -> None:
        name = name.lower()
        if name not in self.intentions:
            raise NotFound(f"service-intentions {name!r} was not set through the API")

        def apply() -> None:
            self.intentions.pop(name, None)
            self._publish()

        await self.db.commit([Write(KIND, name, None)], apply=apply)

    def status(self) -> SourceStatus:
        return SourceStatus(synced=True)
