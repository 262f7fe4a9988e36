"""The zones/ directory as a catalog source.

Each file is parsed on its own and remembered with its mtime; a file that
fails to parse keeps its last good content (stale beats empty) and the error,
with file:line, is logged and shown on /readyz until the file is fixed.
A file broken at start-up has no good content to keep: the source is not
ready (/readyz 503, naming the file) until a pass loads every file cleanly;
from then on it stays ready, so a later mistake never takes every replica
out of service at once.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..catalog.model import Health, Instance, SourceState, Zone
from ..catalog.store import Store
from ..catalog.validate import split_loops
from ..health.spec import CheckSpec
from .split_revisions import SplitRevisions
from .zonefiles import TomlContent, ZoneFileError, parse_master, parse_toml

INTENTION_OWNER = "intention:"   # owners of intentions in the revision records, apart from splits

log = logging.getLogger("meshdns.sources.zones")

SOURCE = "zones"


@dataclass(frozen=True)
class _Parsed:
    stamp: tuple[int, int]
    content: TomlContent | Zone
    included: tuple[Path, ...] = ()                  # files a master file $INCLUDEs...
    included_stamps: tuple[tuple[int, int] | None, ...] = ()   # ... and how they were when it was read


class ZonesSource:
    name = SOURCE

    def __init__(self, directory: str | os.PathLike, store: Store, *, datacenter: str,
                 poll_interval: float = 1.0,
                 health_status: Callable[[str, CheckSpec], Health] | None = None,
                 split_revisions: SplitRevisions | None = None,
                 on_publish: Callable[[dict[str, CheckSpec]], None] | None = None):
        self.directory = Path(directory)
        self.store = store
        self.datacenter = datacenter
        self.poll_interval = poll_interval
        self.health_status = health_status
        self.split_revisions = split_revisions  # None: splits carry no revision (tests of the parser alone)
        self._files: dict[Path, _Parsed] = {}
        self.errors: dict[str, str] = {}
        self.synced = False   # a pass over the directory has run
        self.ready = False    # a pass has loaded every file without an error (then it stays so)
        self.on_publish = on_publish  # given the zone files' checks after each publish (the health runner syncs)

    # -- loading ------------------------------------------------------------

    def _scan(self) -> dict[Path, tuple[int, int]]:
        found = {}
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.iterdir()):
            stamp = _stamp(path) if path.suffix in (".toml", ".zone") and path.is_file() else None
            if stamp is not None:
                found[path] = stamp
        return found

    def _parse(self, path: Path, stamp: tuple[int, int]) -> _Parsed:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            return _Parsed(stamp, parse_toml(str(path), text, datacenter=self.datacenter, source=SOURCE))
        origin = path.name[: -len(".zone")] + "."
        included: list[Path] = []
        zone = parse_master(str(path), text, default_origin=origin, source=SOURCE, included=included)
        return _Parsed(stamp, zone, tuple(included), tuple(_stamp(p) for p in included))

    def reload(self, *, force: bool = False) -> bool:
        """Re-read changed files and publish. True when the catalog changed."""
        return self._apply(*self._read(force=force), force=force)

    def _read(self, *, force: bool) -> tuple[dict[Path, tuple[int, int]], dict[Path, _Parsed | str]]:
        """Stat every file and parse the changed ones (content, or the error naming file:line). It writes
        nothing, so `run` does it in a thread: a large or slow file does not hold up answers."""
        files = self._scan()
        read: dict[Path, _Parsed | str] = {}
        for path, stamp in files.items():
            known = self._files.get(path)
            if known is not None and known.stamp == stamp and not force and \
                    known.included_stamps == tuple(_stamp(p) for p in known.included):
                continue
            try:
                read[path] = self._parse(path, stamp)
            except ZoneFileError as exc:
                read[path] = str(exc)
            except (OSError, UnicodeDecodeError) as exc:
                read[path] = f"{path}:1: cannot read: {exc}"
        return files, read

    def _apply(self, files: dict[Path, tuple[int, int]], read: dict[Path, _Parsed | str], *, force: bool) -> bool:
        """What `_read` found, into the catalog (on the event loop)."""
        changed = force or set(files) != set(self._files)
        for path, parsed in read.items():
            if isinstance(parsed, str):
                self._failed(path, parsed, keep=self._files.get(path))
                continue
            self._files[path] = parsed
            if self.errors.pop(str(path), None):
                log.info("zone file %s is good again", path)
            changed = True
        for path in set(self._files) - set(files):
            del self._files[path]
            changed = True
        for name in [name for name in self.errors if Path(name) not in files]:
            del self.errors[name]   # a file that is gone has nothing left to fix
        if changed or not self.synced:
            self._publish()
        if not self.ready:
            self._check_ready()
        self.synced = True
        return changed

    def _check_ready(self) -> None:
        if not self.errors:
            self.ready = True
            if self.synced:
                log.info("every zone file in %s loads now: ready", self.directory)
        elif not self.synced:
            log.error("not ready: %d zone file(s) in %s failed to load at start-up; /readyz answers 503 "
                      "naming them until they are fixed", len(self.errors), self.directory)

    def _failed(self, path: Path, message: str, *, keep: _Parsed | None) -> None:
        if self.errors.get(str(path)) != message:
            if keep is None:
                log.error("zone file rejected, nothing of it is served: %s", message)
            else:
                log.error("zone file rejected, previous content kept: %s", message)
        self.errors[str(path)] = message
        if keep is None:
            self._files.pop(path, None)

    def state(self) -> SourceState:
        """Merge the files; cross-file problems (unknown node, split loop) reject the offending file."""
        while True:
            state, bad = self._build()
            if bad is None:
                return self._stamped(state)
            path, message = bad
            self._failed(path, message, keep=None)
            self._files.pop(path, None)

    def _build(self):
        services: dict = {}
        nodes: dict = {}
        splits: dict = {}
        zones: dict = {}
        intentions: dict = {}
        for path, parsed in sorted(self._files.items()):
            c = parsed.content
            if isinstance(c, Zone):
                zones.setdefault(c.origin, c)
                continue
            for node in c.nodes:
                nodes[(node.datacenter, node.name.lower())] = node
            for s in c.splits:
                splits[s.name] = s
            for entry in c.intentions:
                intentions[entry.name] = entry
        for path, parsed in sorted(self._files.items()):
            c = parsed.content
            if isinstance(c, Zone):
                continue
            checks = dict(c.checks)
            for inst in c.instances:
                if inst.id in c.node_dc:
                    inst = _on_node_dc(inst, nodes)
                if inst.node and (inst.datacenter, inst.node.lower()) not in nodes:
                    line = c.lines.get(inst.id, 1)
                    elsewhere = ", ".join(sorted(dc for dc, n in nodes if n == inst.node.lower()))
                    hint = f" (nodes of that name are in {elsewhere}: set datacenter)" if elsewhere else ""
                    return None, (path, f"{path}:{line}: service {inst.service!r}: unknown node {inst.node!r}"
                                        f" in datacenter {inst.datacenter!r}{hint}")
                if inst.id in checks and self.health_status is not None:
                    inst = _with_health(inst, self.health_status(inst.id, checks[inst.id]))
                services.setdefault((inst.datacenter, inst.service.lower()), []).append(inst)
        loop = split_loops(splits)
        if loop:
            name = loop.split("'")[1]
            for path, parsed in self._files.items():
                if isinstance(parsed.content, TomlContent) and any(s.name == name for s in parsed.content.splits):
                    line = parsed.content.lines.get("split:" + name, 1)
                    return None, (path, f"{path}:{line}: {loop}")
        return SourceState(services={k: tuple(v) for k, v in services.items()}, nodes=nodes,
                           splits=splits, zones=zones, intentions=intentions), None

    def _stamped(self, state: SourceState) -> SourceState:
        """Each split and intention with the store revision of the write that gave it its content (last
        write wins against the API's entries of the same name)."""
        if self.split_revisions is None:
            return state
        entries = {**{name: split for name, split in state.splits.items()},
                   **{INTENTION_OWNER + name: entry for name, entry in state.intentions.items()}}
        self.split_revisions.retain(SOURCE, entries)
        stamped = {}
        for owner, entry in entries.items():
            revised = self.split_revisions.stamp(SOURCE, owner, entry, on_ready=self.republish)
            if revised is not None:
                stamped[owner] = revised
        return replace(state, splits={o: e for o, e in stamped.items() if not o.startswith(INTENTION_OWNER)},
                       intentions={o[len(INTENTION_OWNER):]: e for o, e in stamped.items()
                                   if o.startswith(INTENTION_OWNER)})

    def checks(self) -> dict[str, CheckSpec]:
        out = {}
        for parsed in self._files.values():
            if isinstance(parsed.content, TomlContent):
                out.update(parsed.content.checks)
        return out

    def _publish(self) -> None:
        self.store.publish(SOURCE, self.state())
        if self.on_publish is not None:
            self.on_publish(self.checks())

    def republish(self) -> None:
        """Rebuild from the parsed files (e.g. a check changed an instance's health)."""
        self._publish()

    # -- running ------------------------------------------------------------

    async def run(self) -> None:
        """Poll for changes; cheap (one stat per file) and works on every filesystem and in ConfigMaps."""
        if not self.synced:
            self.reload()
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                files, read = await asyncio.to_thread(self._read, force=False)
                self._apply(files, read, force=False)
            except Exception:
                log.exception("reloading %s failed; what was loaded before is still served", self.directory)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _on_node_dc(inst: Instance, nodes: dict) -> Instance:
    """An instance with no datacenter of its own lives in its node's: ours when the node is here,
    else the one datacenter that has a node of that name (ambiguity stays an unknown node)."""
    name = inst.node.lower()
    if (inst.datacenter, name) in nodes:
        return inst
    found = [dc for dc, n in nodes if n == name]
    return replace(inst, datacenter=found[0]) if len(found) == 1 else inst


def _with_health(inst: Instance, health: Health) -> Instance:
    return inst if inst.health is health else replace(inst, health=health)
