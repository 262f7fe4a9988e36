"""VM registrations as a catalog source: agent and catalog API writes, kept in the shared store.

Every write is a list of Changes, written as one transaction. Memory is a
view of the store: each revision's changed records (this replica's writes
and every other replica's) are applied incrementally and published, so what
DNS answers is exactly what the store holds. Instance health is the worst of
the instance's checks and its node's checks, as stored: the replica that owns
a check runs it and stores each change of status or output. Maintenance mode
hides an instance.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from ..catalog.model import Health, Instance, Node, NodeKey, Revision, ServiceKey, SourceState
from ..catalog.store import Store
from ..catalog.validate import FieldError
from ..health import state as sm
from ..health.runner import HealthRunner, same_probe
from ..health.state import CheckState
from ..store.records import Record, Records, Write
from ..store.replicas import SingleReplica
from .registration_model import (SOURCE, CatalogRegistration, CheckReg, NodeReg, ServiceReg, load_check,
                                 load_node, load_service)
from .status import SourceStatus

log = logging.getLogger("meshdns.sources.registrations")

SKey = tuple[str, str, str]   # (datacenter, lower node, service id)
CKey = tuple[str, str, str]   # (datacenter, lower node, check id)

NODE, SERVICE, CHECK, CHECK_STATUS = "node", "service", "check", "check-status"
CHECK_TTL = "check-ttl"   # a TTL update received by a replica that does not run the check, for its owner
KINDS = (NODE, SERVICE, CHECK, CHECK_STATUS, CHECK_TTL)
_LOADERS = {NODE: load_node, SERVICE: load_service, CHECK: load_check}


class NotFound(LookupError):
    """The thing named in the URL or body does not exist (HTTP 404)."""


@dataclass(frozen=True, slots=True)
class Change:
    kind: str                 # node | service | check
    key: tuple
    value: Any = None         # the record, or None to delete


AGENT = "agent"  # in the store, agent registrations name no node: they follow meshdns's node across renames


class Registrations:
    name = SOURCE

    def __init__(self, store: Store, db: Records, runner: HealthRunner, *, agent_node: NodeReg,
                 replicas=None, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.db = db
        self.runner = runner
        self.replicas = replicas or SingleReplica("local")
        self.agent_node = agent_node
        self.datacenter = agent_node.datacenter
        self.clock = clock
        self.nodes: dict[NodeKey, NodeReg] = {}
        self.services: dict[SKey, ServiceReg] = {}
        self.checks: dict[CKey, CheckReg] = {}
        self._keys: dict[tuple[str, str], tuple] = {}          # (kind, key in the store) -> key
        self._statuses: dict[str, CheckState] = {}               # check's key in the store -> stored state
        self._orphans: dict[tuple[str, tuple], Change] = {}      # stored, but its node or service is not
        self._by_name: dict[ServiceKey, set[SKey]] = {}
        self._node_services: dict[NodeKey, set[SKey]] = {}
        self._owned_checks: dict[tuple[str, str, str], set[CKey]] = {}  # (dc, node, service id or "")
        self._instances: dict[ServiceKey, tuple[Instance, ...]] = {}
        self._dirty: set[ServiceKey] = set()
        self._nodes_dirty = True
        self._node_objs: dict[NodeKey, Node] = {}
        self._reaping: set[asyncio.Task] = set()
        self._quiet: CKey | None = None  # a check whose status change is already stored
        self.errors: dict[str, str] = {}
        self.synced = False
        runner.register_owner(SOURCE, on_change=self._check_changed, on_reap=self._reap)
        db.subscribe(KINDS, self._on_records)
        self.replicas.on_members(self._members_changed)
        self.replicas.on_leader(self._leader_changed)

    # -- stored form ----------------------------------------------------------

    def _disk_key(self, key: tuple) -> str:
        if len(key) == 3 and key[:2] == self.agent_node.key:
            return f"{AGENT}/{key[2]}"
        return "/".join(key)

    def _write(self, change: Change) -> Write:
        """Re-registering what is already stored changes nothing, its indexes included (as in Consul)."""
        value = None
        if change.value is not None:
            value = change.value.record()
            if change.kind != NODE and change.key[:2] == self.agent_node.key:
                value.update(Datacenter=None, Node=None, Agent=True)
        return Write(change.kind, self._disk_key(change.key), value, if_changed=True)

    def _status_write(self, key: CKey, state: CheckState | None) -> Write:
        value = None if state is None else {"Status": state.status.api_name, "Output": self.runner.clip(state.output)}
        return Write(CHECK_STATUS, self._disk_key(key), value, if_changed=True)

    # -- indexes --------------------------------------------------------------

    def revision_of(self, kind: str, key: tuple) -> Revision | None:
        """A node's or service's CreateIndex/ModifyIndex: its record's create and mod revision."""
        return self.db.revision_of(kind, self._disk_key(key))

    def check_revision(self, check: CheckReg) -> Revision | None:
        """A check changes with its definition and with its status (kept in a record of its own)."""
        definition = self.db.revision_of(CHECK, self._disk_key(check.key))
        status = self.db.revision_of(CHECK_STATUS, self._disk_key(check.key))
        if definition is None:
            return None
        return Revision(definition.create, max(definition.mod, status.mod if status is not None else 0))

    # -- applying the store's changes ----------------------------------------------

    def _on_records(self, records: list[Record]) -> None:
        """One revision's changed records: statuses, removals (children first), puts (parents first)."""
        now = self.clock()
        by_kind: dict[str, list[Record]] = {kind: [] for kind in KINDS}
        for r in records:
            by_kind[r.kind].append(r)
        for r in by_kind[CHECK_STATUS]:
            self._apply_status(r, now)
        gone: set[tuple] = set()
        for kind in (CHECK, SERVICE, NODE):
            for r in by_kind[kind]:
                if r.value is None:
                    key = self._remove_record(kind, r.key)
                    if key is not None:
                        gone.add(key)
        for kind in (NODE, SERVICE, CHECK):
            for r in by_kind[kind]:
                if r.value is not None:
                    self._put_record(kind, r.key, r.value)
        self._settle_orphans(gone)
        if self.synced:  # a TTL update stored before this replica read the store is history
            for r in by_kind[CHECK_TTL]:
                self._apply_heartbeat(r)
        else:
            self.synced = True
            log.info("registrations loaded: %d services, %d checks, %d nodes from %s",
                     len(self.services), len(self.checks), len(self.nodes), self.db)
        self.publish()

    def _put_record(self, kind: str, disk_key: str, rec: Any) -> None:
        where = f"{kind}/{disk_key}"
        try:
            if isinstance(rec, dict) and rec.get("Agent"):
                rec = {**rec, "Datacenter": self.agent_node.datacenter, "Node": self.agent_node.name}
            value = _LOADERS[kind](rec)
        except (FieldError, KeyError, TypeError, AttributeError) as exc:
            self._remove_record(kind, disk_key)
            self.errors[where] = f"stored {kind} {disk_key!r} is invalid, skipped: {exc}"
            log.error("%s", self.errors[where])
            return
        self.errors.pop(where, None)
        old = self._keys.get((kind, disk_key))
        if old is not None and old != value.key:
            self._remove_record(kind, disk_key)
        self._keys[(kind, disk_key)] = value.key
        change = Change(kind, value.key, value)
        if self._fits(change):
            self._orphans.pop((kind, value.key), None)
            self._apply(change, initial=self._stored_initial(value.key) if kind == CHECK else None)
        else:
            self._orphan(change)

    def _remove_record(self, kind: str, disk_key: str) -> tuple | None:
        key = self._keys.pop((kind, disk_key), None)
        self.errors.pop(f"{kind}/{disk_key}", None)
        if key is None:
            return None
        self._orphans.pop((kind, key), None)
        self._apply(Change(kind, key))
        return key

    def _fits(self, change: Change) -> bool:
        """A service needs its node, a check its node and (if it names one) its service."""
        if change.kind == NODE:
            return True
        node_ok = change.key[:2] in self.nodes or change.key[:2] == self.agent_node.key
        if change.kind == SERVICE or not node_ok:
            return node_ok
        sid = change.value.service_id
        return not sid or (*change.key[:2], sid) in self.services

    def _orphan(self, change: Change) -> None:
        """Kept in the store, not served: its node or service went away in a write that raced it."""
        if change.key in (self.services if change.kind == SERVICE else self.checks):
            self._apply(Change(change.kind, change.key))
        self._orphans[(change.kind, change.key)] = change
        disk_key = self._disk_key(change.key)
        self.errors[f"{change.kind}/{disk_key}"] = f"stored {change.kind} {disk_key!r} has no node or service"

    def _settle_orphans(self, gone: set[tuple]) -> None:
        """Hide what lost its node or service in this batch; serve orphans whose parents arrived."""
        for key in gone:
            if len(key) == 2:
                for skey in list(self._node_services.get(key, ())):
                    self._orphan(Change(SERVICE, skey, self.services[skey]))
                for ckey in [k for k in self.checks if k[:2] == key]:
                    self._orphan(Change(CHECK, ckey, self.checks[ckey]))
            else:
                for ckey in list(self._owned_checks.get(key, ())):
                    self._orphan(Change(CHECK, ckey, self.checks[ckey]))
        for kind in (SERVICE, CHECK):
            for (k, key), change in list(self._orphans.items()):
                if k == kind and self._fits(change):
                    del self._orphans[(k, key)]
                    self.errors.pop(f"{kind}/{self._disk_key(key)}", None)
                    self._apply(change, initial=self._stored_initial(key) if kind == CHECK else None)

    def _apply_status(self, r: Record, now: float) -> None:
        state = self._stored_state(r.value, now) if r.value is not None else None
        if state is None:
            self._statuses.pop(r.key, None)
        else:
            self._statuses[r.key] = state
        key = self._keys.get((CHECK, r.key))
        check = self.checks.get(key) if key is not None else None
        if check is None:
            return
        if state is not None and check.spec is not None:
            self.runner.observe(SOURCE, key, state.status, state.output)  # followed here, run elsewhere
        self._mark_affected(check)

    def _apply_heartbeat(self, r: Record) -> None:
        """A TTL update another replica received: the owner restarts the TTL with it."""
        key = self._keys.get((CHECK, r.key))
        check = self.checks.get(key) if key is not None else None
        if check is None or r.value is None or not self.runner.is_active(SOURCE, key) or check.spec.kind != "ttl":
            return
        state = self._stored_state(r.value, self.clock())
        if state is not None:
            self.runner.update_ttl(SOURCE, key, state.status, state.output)

    def _stored_initial(self, key: CKey) -> CheckState | None:
        """The stored state a check the runner does not know yet starts from."""
        if self.runner.state(SOURCE, key) is not None:
            return None
        return self._statuses.get(self._disk_key(key))

    @staticmethod
    def _stored_state(rec: Any, now: float) -> CheckState | None:
        if not isinstance(rec, dict):
            return None
        try:
            status = Health.parse(str(rec.get("Status")))
        except ValueError:
            return None
        return sm.initial(status, now, str(rec.get("Output") or ""))

    def _apply(self, change: Change, *, initial: CheckState | None = None) -> None:
        if change.kind == NODE:
            self._apply_node(change.key, change.value)
        elif change.kind == SERVICE:
            self._apply_service(change.key, change.value)
        elif change.kind == CHECK:
            self._apply_check(change.key, change.value, initial)

    def _apply_node(self, key: NodeKey, node: NodeReg | None) -> None:
        if node is None:
            self.nodes.pop(key, None)
        else:
            self.nodes[key] = node
        self._nodes_dirty = True

    def _apply_service(self, key: SKey, svc: ServiceReg | None) -> None:
        old = self.services.pop(key, None)
        if old is not None:
            self._by_name.get(old.service_key, set()).discard(key)
            self._node_services.get(key[:2], set()).discard(key)
            self._dirty.add(old.service_key)
        if svc is not None:
            self.services[key] = svc
            self._by_name.setdefault(svc.service_key, set()).add(key)
            self._node_services.setdefault(key[:2], set()).add(key)
            self._dirty.add(svc.service_key)

    def _apply_check(self, key: CKey, check: CheckReg | None, initial: CheckState | None) -> None:
        old = self.checks.pop(key, None)
        if old is not None:
            self._owned_checks.get((*key[:2], old.service_id), set()).discard(key)
            self._mark_affected(old)
        if check is None:
            self.runner.remove(SOURCE, key)
            return
        self.checks[key] = check
        self._owned_checks.setdefault((*key[:2], check.service_id), set()).add(key)
        if check.spec is not None:
            self.runner.add(SOURCE, key, check.spec, state=initial, active=self._owns(key))
        else:
            self.runner.remove(SOURCE, key)
        self._mark_affected(check)

    def _mark_affected(self, check: CheckReg) -> None:
        node_key = check.node_key
        if check.service_id:
            svc = self.services.get((*node_key, check.service_id))
            if svc is not None:
                self._dirty.add(svc.service_key)
        else:
            for skey in self._node_services.get(node_key, ()):
                self._dirty.add(self.services[skey].service_key)

    # -- health: which replica runs which check --------------------------------------

    def _owns(self, key: CKey) -> bool:
        return self.replicas.owns(self._disk_key(key))

    def _members_changed(self) -> None:
        """The live replicas changed: run the checks now ours, follow the others (their state stays)."""
        for key, check in self.checks.items():
            if check.spec is None:
                continue
            mine = self._owns(key)
            if mine != self.runner.is_active(SOURCE, key):
                self.runner.set_active(SOURCE, key, mine)
                if not mine:
                    self.db.cancel_soon(CHECK_STATUS, self._disk_key(key))
            state = self.runner.state(SOURCE, key) if mine else None
            stored = self.check_state(check)
            if state is not None and (state.status, state.output) != (stored.status, stored.output):
                self._store_status(key, state)   # a result not stored yet (e.g. made while cut off)

    def _leader_changed(self) -> None:
        """A new leader reaps what waited for one."""
        if self.replicas.is_leader:
            for key in self.runner.overdue(SOURCE):
                self._reap(key)

    def check_state(self, check: CheckReg) -> CheckState:
        """What is stored for the check (its owner stores every change), else its initial status."""
        if check.spec is not None:
            stored = self._statuses.get(self._disk_key(check.key))
            if stored is not None:
                return stored
        return CheckState(status=check.status, output=check.output)

    def checks_of(self, dc: str, node: str, service_id: str = "") -> list[CheckReg]:
        """A service's own checks (service_id given) or its node's checks ("")."""
        keys = self._owned_checks.get((dc, node.lower(), service_id), ())
        return [self.checks[k] for k in sorted(keys)]

    def health_of(self, svc: ServiceReg) -> Health:
        if svc.maintenance is not None:
            return Health.MAINTENANCE
        worst = Health.PASSING
        for sid in (svc.id, ""):
            for key in self._owned_checks.get((*svc.key[:2], sid), ()):
                worst = max(worst, self.check_state(self.checks[key]).status)
        return worst

    def _check_changed(self, key: CKey, old: CheckState, new: CheckState) -> None:
        """A check run here changed status or output: store it; DNS follows once it is stored."""
        if key not in self.checks or key == self._quiet or not self.runner.is_active(SOURCE, key):
            return
        self._store_status(key, new)

    def _store_status(self, key: CKey, state: CheckState) -> None:
        """Fenced by this replica's membership as it is now: if that ends before the write, the write is
        dropped (a replica cut off from the others must not overwrite what their owner stores since)."""
        fence = self.replicas.fence()
        if fence is not None:
            self.db.commit_soon([self._status_write(key, state)], fence=fence)

    def _reap(self, key: CKey) -> None:
        check = self.checks.get(key)
        if check is None or not check.service_id or not self.replicas.is_leader:
            return
        skey = (*key[:2], check.service_id)
        if skey not in self.services:
            return
        log.info("deregistering service %s: check %s critical past DeregisterCriticalServiceAfter",
                 check.service_id, check.id)
        task = asyncio.get_running_loop().create_task(self._deregister_quietly(skey))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def _deregister_quietly(self, skey: SKey) -> None:
        try:
            await self.deregister_service(skey)
        except NotFound:
            pass
        except Exception:
            log.exception("deregistering %s failed", skey[2])

    # -- publishing -----------------------------------------------------------

    def publish(self) -> None:
        """Rebuild the dirty service keys and hand the whole state to the store, at the applied revision."""
        dirty, self._dirty = self._dirty, set()
        for skey in dirty:
            members = sorted(self._by_name.get(skey, ()))
            if members:
                self._instances[skey] = tuple(self.services[k].instance(self.health_of(self.services[k]))
                                              for k in members)
            else:
                self._instances.pop(skey, None)
                self._by_name.pop(skey, None)
        if self._nodes_dirty:
            objs = {k: n.node() for k, n in self.nodes.items()}
            objs.setdefault(self.agent_node.key, self.agent_node.node())
            self._node_objs = objs
            self._nodes_dirty = False
        self.store.publish(SOURCE, SourceState(services=dict(self._instances), nodes=self._node_objs),
                           changed=dirty, revision=self.db.revision)

    # -- writes ---------------------------------------------------------------

    async def _commit(self, changes: list[Change], extra: Iterable[Write] = ()) -> None:
        """One transaction; memory and DNS show it (through the store's view) before this returns."""
        extra = list(extra) + self._status_resets(changes)
        await self.db.commit([self._write(c) for c in changes] + extra)

    def _status_resets(self, changes: list[Change]) -> list[Write]:
        """A new check, or one that now probes something else, starts from its initial status after a
        restart too: drop the status remembered for the old one (the runner keeps it otherwise)."""
        out = []
        for c in changes:
            if c.kind == CHECK and c.value is not None and c.value.spec is not None:
                old = self.checks.get(c.key)
                if old is None or old.spec is None or not same_probe(old.spec, c.value.spec):
                    out.append(self._status_write(c.key, None))
        return out

    def _check_removals(self, keys: Iterable[CKey]) -> tuple[list[Change], list[Write]]:
        keys = list(keys)
        return [Change(CHECK, k) for k in keys], [w for k in keys for w in (
            self._status_write(k, None), Write(CHECK_TTL, self._disk_key(k), None))]

    def agent_key(self, service_id: str) -> SKey:
        return (*self.agent_node.key, service_id)

    async def register_service(self, svc: ServiceReg, checks: list[CheckReg], *, replace_checks: bool) -> None:
        """Agent registration: the service and its checks; re-registering keeps unlisted checks
        unless `replace_checks` (Consul's ?replace-existing-checks)."""
        changes = [Change(SERVICE, svc.key, svc)] + [Change(CHECK, c.key, c) for c in checks]
        extra: list[Write] = []
        if replace_checks:
            new = {c.key for c in checks}
            gone = [k for k in self._owned_checks.get((*svc.key[:2], svc.id), ()) if k not in new]
            removed, extra = self._check_removals(gone)
            changes += removed
        await self._commit(changes, extra)
        log.info("registered service %s (id %s) at %s:%d with %d checks", svc.name, svc.id,
                 svc.address or svc.node, svc.port, len(checks))

    async def deregister_service(self, key: SKey) -> ServiceReg:
        svc = self.services.get(key)
        if svc is None:
            raise NotFound(f"unknown service ID {key[2]!r}")
        removed, extra = self._check_removals(self._owned_checks.get((*key[:2], svc.id), ()))
        await self._commit([Change(SERVICE, key)] + removed, extra)
        log.info("deregistered service %s (id %s)", svc.name, svc.id)
        return svc

    async def set_maintenance(self, key: SKey, reason: str | None) -> None:
        svc = self.services.get(key)
        if svc is None:
            raise NotFound(f"unknown service ID {key[2]!r}")
        await self._commit([Change(SERVICE, key, replace(svc, maintenance=reason))])
        log.info("service %s (id %s): maintenance %s", svc.name, svc.id, "on" if reason is not None else "off")

    async def register_check(self, check: CheckReg) -> None:
        if check.service_id and (*check.key[:2], check.service_id) not in self.services:
            raise FieldError("ServiceID", f"unknown service ID {check.service_id!r}")
        await self._commit([Change(CHECK, check.key, check)])
        log.info("registered check %s on %s", check.id, check.service_id or f"node {check.node}")

    async def deregister_check(self, key: CKey) -> None:
        if key not in self.checks:
            raise NotFound(f"unknown check ID {key[2]!r}")
        changes, extra = self._check_removals([key])
        await self._commit(changes, extra)
        log.info("deregistered check %s", key[2])

    async def update_ttl(self, key: CKey, status: Health, output: str) -> None:
        """pass/warn/fail/update, through any replica; a new status or output is stored before this returns.

        The replica that runs the check restarts its TTL; another stores the update for it (and the new
        status, so every replica shows it at once)."""
        output = self.runner.clip(output)
        check = self.checks.get(key)
        if check is None:
            raise NotFound(f"unknown check ID {key[2]!r}")
        if check.spec is None or check.spec.kind != "ttl":
            raise FieldError("CheckID", f"check {key[2]!r} is not a TTL check")
        stored = self.check_state(check)
        new = CheckState(status=status, output=output)
        changed = (stored.status, stored.output) != (status, output)
        if not self.runner.is_active(SOURCE, key):
            update = {"Status": status.api_name, "Output": output}
            await self.db.commit([Write(CHECK_TTL, self._disk_key(key), update)]
                                 + ([self._status_write(key, new)] if changed else []))
            return
        if changed:  # stored first: a refused write changes nothing, here or in DNS
            await self.db.commit([self._status_write(key, new)])
        if self.checks.get(key) is not check or not self.runner.is_active(SOURCE, key):
            return  # replaced, removed or handed over while this was being written
        self._quiet = key  # already stored: _check_changed must not queue the same value again
        try:
            self.runner.update_ttl(SOURCE, key, status, output)
        finally:
            self._quiet = None

    async def catalog_register(self, reg: CatalogRegistration) -> None:
        node_key = reg.node.key
        if node_key == self.agent_node.key:
            raise FieldError("Node", f"{reg.node.name!r} is meshdns's own node; use /v1/agent/service/register")
        changes = []
        if not (reg.skip_node_update and node_key in self.nodes):
            changes.append(Change(NODE, node_key, reg.node))
        if reg.service is not None:
            changes.append(Change(SERVICE, reg.service.key, reg.service))
        ids = {reg.service.id} if reg.service is not None else set()
        for i, c in enumerate(reg.checks):
            if c.service_id and c.service_id not in ids and (*node_key, c.service_id) not in self.services:
                raise FieldError(f"Checks[{i}].ServiceID" if len(reg.checks) > 1 else "Check.ServiceID",
                                 f"ServiceID {c.service_id!r} is not registered on node {reg.node.name!r}")
            changes.append(Change(CHECK, c.key, c))
        await self._commit(changes)
        log.info("catalog: registered node %s%s%s", reg.node.name,
                 f", service {reg.service.name} (id {reg.service.id})" if reg.service else "",
                 f", {len(reg.checks)} checks" if reg.checks else "")

    async def catalog_deregister(self, node_key: NodeKey, *, service_id: str = "", check_id: str = "") -> None:
        """Remove a check, a service (with its checks) or a node (with everything on it). Something already
        gone is no error (Consul answers 200; tools such as consul-esm deregister idempotently)."""
        what = f"check {check_id}" if check_id else f"service {service_id}" if service_id else "the node"
        if node_key not in self.nodes or (check_id and (*node_key, check_id) not in self.checks) or (
                not check_id and service_id and (*node_key, service_id) not in self.services):
            log.info("catalog: %s on node %s was already deregistered", what, node_key[1])
            return
        if check_id:
            changes, extra = self._check_removals([(*node_key, check_id)])
        elif service_id:
            skey = (*node_key, service_id)
            changes, extra = self._check_removals(self._owned_checks.get(skey, ()))
            changes.insert(0, Change(SERVICE, skey))
        else:
            checks = [k for k in self.checks if k[:2] == node_key]
            changes, extra = self._check_removals(checks)
            changes += [Change(SERVICE, k) for k in sorted(self._node_services.get(node_key, ()))]
            changes.append(Change(NODE, node_key))
        await self._commit(changes, extra)
        log.info("catalog: deregistered %s on node %s", what, node_key[1])

    # -- views ------------------------------------------------------------------

    def all_nodes(self) -> dict[NodeKey, NodeReg]:
        """Catalog-registered nodes and meshdns's own (agent) node."""
        return {**self.nodes, self.agent_node.key: self.agent_node}

    def services_on(self, node_key: NodeKey) -> list[ServiceReg]:
        return [self.services[k] for k in sorted(self._node_services.get(node_key, ()))]

    def service_names(self, keys: Iterable[SKey]) -> set[str]:
        return {self.services[k].name for k in keys if k in self.services}

    def status(self) -> SourceStatus:
        return SourceStatus(synced=self.synced, errors=dict(self.errors))

    async def close(self) -> None:
        for task in list(self._reaping):
            task.cancel()
