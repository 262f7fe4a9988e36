"""Config entries of one kind written through the API: a view of the store's records of that kind.

A write is validated, then stored (one transaction); every replica, this one
included, applies the stored record and publishes it, so an invalid or failed
write leaves the old entry in force. An entry's revisions are its record's:
every PUT is a new write, and the newest write of a name wins over zone files
and Kubernetes annotations too.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Generic, TypeVar

from ..catalog.model import Revision, SourceState
from ..catalog.store import Store
from ..catalog.validate import FieldError
from ..store.records import Record, Records, Write
from .registrations import NotFound
from .status import SourceStatus

log = logging.getLogger("meshdns.sources.entries")

Entry = TypeVar("Entry")


class StoredEntries(Generic[Entry]):
    name: str   # the catalog source
    kind: str   # the records' kind, Consul's entry kind

    def __init__(self, store: Store, db: Records):
        self.store = store
        self.db = db
        self.entries: dict[str, Entry] = {}
        db.subscribe((self.kind,), self._on_records)

    def parse_record(self, key: str, record: Any) -> Entry:
        """A stored record -> the entry; raises FieldError, KeyError, TypeError or ValueError."""
        raise NotImplementedError

    def revised(self, entry: Entry, revision: Revision) -> Entry:
        """The entry with its record's revisions (every write is a new one: last write wins)."""
        return replace(entry, revision=revision.mod, create_revision=revision.create)

    def state(self) -> SourceState:
        raise NotImplementedError

    def _on_records(self, records: list[Record]) -> None:
        for r in records:
            self.entries.pop(r.key, None)
            if r.value is None:
                continue
            try:
                entry = self.parse_record(r.key, r.value)
            except (FieldError, KeyError, TypeError, ValueError) as exc:
                log.error("stored %s %r is unreadable and was skipped: %s", self.kind, r.key, exc)
                continue
            self.entries[r.key] = self.revised(entry, r.revision)
        self.store.publish(self.name, self.state(), revision=self.db.revision)

    async def store_entry(self, name: str, record: Any, entry: Entry) -> Entry:
        """Write the entry; the entry as stored and applied (or as given if another write replaced it)."""
        await self.db.commit([Write(self.kind, name, record)])
        return self.entries.get(name, entry)

    async def delete(self, name: str) -> None:
        name = name.lower()
        if name not in self.entries:
            raise NotFound(f"{self.kind} {name!r} was not set through the API")
        await self.db.commit([Write(self.kind, name, None)])

    def status(self) -> SourceStatus:
        return SourceStatus(synced=True)
