"""Last write wins between the sources of a split (or an intention), decided by the store's revision, not by clocks.

The API's splits are records whose mod revision is their revision. A zone file
or a Kubernetes annotation presents its splits again at every load, so each
(source, owner) keeps a small record of the content it last presented: a new
or changed content is written (one revision, durable before it is served),
and an unchanged one keeps its revision across restarts. Whatever order the
sources load in after a restart, the newest write still wins. The records are
shared: replicas that read the same zone files find the content already
recorded by the first of them, so its split has one revision everywhere.

While a new content's record is being written, the owner's previous split (if
any) is served; `on_ready` tells the source to present it again.

A data directory from before revisions (schema 1) has no such records: the
splits the other sources present on the first start after the upgrade are
recorded as older than every API write (revision 0), so an override made
through the API before the upgrade stays in force until either side is written
again.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import astuple, replace
from typing import Callable, Iterable, TypeVar

from ..catalog.model import Intention, Split
from ..store.records import Records, Write

log = logging.getLogger("meshdns.sources.splits")

KIND = "split-revision"

Entry = TypeVar("Entry", Split, Intention)   # config entries that several sources may write


def content_hash(entry: Split | Intention) -> str:
    """What the entry says, without where it came from or when."""
    plain = replace(entry, source="", revision=0, create_revision=0)
    return hashlib.sha256(json.dumps(astuple(plain), default=str).encode()).hexdigest()[:32]


class SplitRevisions:
    def __init__(self, db: Records):
        self.db = db
        self._pending: dict[str, str] = {}    # key -> content hash being written
        self._served: dict[str, Split] = {}   # key -> the split last stamped for it
        self._tasks: set[asyncio.Task] = set()
        self._touched: set[str] = set()

    @property
    def _upgrading(self) -> bool:
        """Splits first seen at this start predate the API's (see above)."""
        return self.db.upgraded_from == 1

    def _recorded(self, key: str) -> tuple[str, bool] | None:
        rec = self.db.value_of(KIND, key)
        return (rec.get("hash"), bool(rec.get("upgraded"))) if isinstance(rec, dict) else None

    def stamp(self, source: str, owner: str, split: Entry, *, on_ready: Callable[[], None]) -> Entry | None:
        """`split` with its revisions if its content is recorded; otherwise record it (then call `on_ready`)
        and meanwhile give the owner's previous split, or None."""
        key = f"{source}/{owner}"
        digest = content_hash(split)
        revision = self.db.revision_of(KIND, key)
        recorded = self._recorded(key)
        if recorded is not None and recorded[0] == digest and revision is not None:
            stamped = replace(split, revision=0, create_revision=0) if recorded[1] else \
                replace(split, revision=revision.mod, create_revision=revision.create)
            self._served[key] = stamped
            self._touched.add(key)
            return stamped
        if self._pending.get(key) != digest:
            self._pending[key] = digest
            upgraded = self._upgrading and recorded is None and key not in self._touched
            task = asyncio.get_running_loop().create_task(self._record(key, digest, upgraded, on_ready))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._touched.add(key)
        return self._served.get(key)

    async def _record(self, key: str, digest: str, upgraded: bool, on_ready: Callable[[], None]) -> None:
        value = {"hash": digest, "upgraded": True} if upgraded else {"hash": digest}
        try:
            await self.db.commit([Write(KIND, key, value, if_changed=True)])
        except Exception as exc:  # storage trouble: the previous split stays; the next presentation retries
            log.error("cannot record the revision of split %s: %s", key, exc)
        else:
            on_ready()
        finally:
            if self._pending.get(key) == digest:
                del self._pending[key]

    def forget(self, source: str, owner: str) -> None:
        """The owner presents no split any more: a later one is a new write."""
        key = f"{source}/{owner}"
        self._touched.add(key)
        self._pending.pop(key, None)
        self._served.pop(key, None)
        if self.db.revision_of(KIND, key) is not None:
            self.db.commit_soon([Write(KIND, key, None)])

    def retain(self, source: str, owners: Iterable[str]) -> None:
        """Forget every owner of `source` but these (a source that presents all its splits at once)."""
        keep = {f"{source}/{owner}" for owner in owners}
        prefix = source + "/"
        for key in [k for k in {*self.db.load(KIND), *self._pending} if k.startswith(prefix) and k not in keep]:
            self.forget(source, key[len(prefix):])

    def pending(self, source: str) -> bool:
        """Whether a content of `source` is still being recorded (its split is not served yet)."""
        return any(key.startswith(source + "/") for key in self._pending)

    async def settled(self) -> None:
        """Wait until every content presented so far has its revision (start-up)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
