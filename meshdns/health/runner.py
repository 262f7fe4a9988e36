"""One runner for every check, whoever owns it (zone files, registrations).

A single scheduler task keeps a heap of due times instead of a task per
check. A new check's first probe is placed at a random point of its interval
(jitter), so thousands of checks loaded at start spread out instead of
stampeding, and at most `concurrency` probes are in flight. A status change
is reported to the check's owner at once; the owner republishes its catalog
state, so DNS answers change with the check. A check may be passive: another
replica runs it, and its state here follows what that replica stored
(`observe`); it still counts towards DeregisterCriticalServiceAfter, so
whichever replica leads can reap it.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping

from ..catalog.model import Health
from . import state as sm
from .checkers import new_session, probe_http, probe_tcp
from .spec import CheckSpec
from .state import CheckState

log = logging.getLogger("meshdns.health")

# on_change(key, old, new): any change of status or output
ChangeCallback = Callable[[Hashable, CheckState, CheckState], None]
# on_reap(key): the check has been critical for DeregisterCriticalServiceAfter
ReapCallback = Callable[[Hashable], None]


@dataclass
class _Owner:
    on_change: ChangeCallback
    on_reap: ReapCallback | None


@dataclass
class _Check:
    owner: str
    key: Hashable
    spec: CheckSpec
    state: CheckState
    gen: int = 0
    active: bool = True   # probed (or its TTL kept) here; passive: another replica runs it
    running: bool = False
    last_run: float | None = None


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    ref: tuple = field(compare=False)
    gen: int = field(compare=False)
    what: str = field(compare=False)  # probe | ttl | reap


class HealthRunner:
    def __init__(self, *, concurrency: int = 64, output_max_size: int = 4096, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.concurrency = concurrency
        self.output_max_size = output_max_size
        self.rng = rng or random.Random()
        self.clock = clock
        self._owners: dict[str, _Owner] = {}
        self._checks: dict[tuple[str, Hashable], _Check] = {}
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._gens = itertools.count(1)  # global, so a removed and re-added check never matches old entries
        self._wake: asyncio.Event | None = None
        self._sem = asyncio.Semaphore(concurrency)
        self._session = None
        self._probes: set[asyncio.Task] = set()
        self._closed = False
        self.probes_started = 0
        self.probes_run = 0

    # -- owners and checks --------------------------------------------------

    def register_owner(self, owner: str, *, on_change: ChangeCallback, on_reap: ReapCallback | None = None) -> None:
        self._owners[owner] = _Owner(on_change, on_reap)

    def add(self, owner: str, key: Hashable, spec: CheckSpec, *, state: CheckState | None = None,
            active: bool = True) -> None:
        """Start running a check (or, not `active`, follow it); re-adding the same spec keeps its state, a
        changed one restarts it."""
        ref = (owner, key)
        old = self._checks.get(ref)
        if old is not None and old.spec == spec and state is None:
            self.set_active(owner, key, active)
            return
        now = self.clock()
        if state is None:
            state = old.state if old is not None and same_probe(old.spec, spec) else sm.initial(spec.initial, now)
        check = _Check(owner, key, spec, state, gen=next(self._gens), active=active)
        self._checks[ref] = check
        if active:
            self._start(check, now)
        self._schedule_reap(check)

    def _start(self, check: _Check, now: float) -> None:
        if check.spec.kind == "ttl":
            self._push(now + check.spec.ttl, check, "ttl")
        else:
            self._push(now + self.rng.uniform(0, check.spec.interval), check, "probe")

    def set_active(self, owner: str, key: Hashable, active: bool) -> None:
        """Run the check here from now on (a TTL starts afresh), or stop and follow it; its state stays."""
        check = self._checks.get((owner, key))
        if check is None or check.active == active:
            return
        check.active = active
        check.gen = next(self._gens)  # what was scheduled for it no longer applies
        if active:
            self._start(check, self.clock())

    def is_active(self, owner: str, key: Hashable) -> bool:
        check = self._checks.get((owner, key))
        return check is not None and check.active

    def observe(self, owner: str, key: Hashable, status: Health, output: str) -> None:
        """A passive check's state, as the replica that runs it stored it."""
        check = self._checks.get((owner, key))
        if check is None or check.active:
            return
        if (status, output) != (check.state.status, check.state.output):
            self._set(check, sm.set_status(check.state, status, output, now=self.clock()))

    def overdue(self, owner: str) -> list[Hashable]:
        """The owner's checks critical for their DeregisterCriticalServiceAfter already (a new leader's)."""
        now = self.clock()
        return [c.key for c in self._checks.values() if c.owner == owner
                and (due := sm.reap_due(c.state, c.spec.deregister_critical_after)) is not None and due <= now]

    def remove(self, owner: str, key: Hashable) -> None:
        self._checks.pop((owner, key), None)

    def sync(self, owner: str, specs: Mapping[Hashable, CheckSpec]) -> None:
        """Make the owner's running checks exactly `specs`."""
        for ref in [r for r in self._checks if r[0] == owner and r[1] not in specs]:
            del self._checks[ref]
        for key, spec in specs.items():
            self.add(owner, key, spec)

    def state(self, owner: str, key: Hashable) -> CheckState | None:
        c = self._checks.get((owner, key))
        return c.state if c is not None else None

    def spec(self, owner: str, key: Hashable) -> CheckSpec | None:
        c = self._checks.get((owner, key))
        return c.spec if c is not None else None

    def status_for(self, owner: str) -> Callable[[Hashable, CheckSpec], Health]:
        """A `health_status(key, spec)` callable for sources that build instances from specs."""
        def status(key: Hashable, spec: CheckSpec) -> Health:
            c = self._checks.get((owner, key))
            return c.state.status if c is not None else spec.initial
        return status

    def counts(self) -> Counter:
        """(owner, status name) -> number of checks, for metrics."""
        return Counter((c.owner, c.state.status.api_name) for c in self._checks.values())

    def active_counts(self) -> Counter:
        """owner -> number of checks run here (not followed from another replica)."""
        return Counter(c.owner for c in self._checks.values() if c.active)

    def __len__(self) -> int:
        return len(self._checks)

    def clip(self, output: str) -> str:
        """A check's output as it is kept: at most `output_max_size` characters."""
        return output[:self.output_max_size]

    # -- TTL ------------------------------------------------------------------

    def update_ttl(self, owner: str, key: Hashable, status: Health, output: str) -> None:
        """pass/warn/fail/update: set the status and restart the TTL."""
        c = self._checks.get((owner, key))
        if c is None or c.spec.kind != "ttl" or not c.active:
            raise KeyError(key)
        now = self.clock()
        c.gen = next(self._gens)
        self._push(now + c.spec.ttl, c, "ttl")
        self._set(c, sm.set_status(c.state, status, self.clip(output), now=now))

    # -- scheduling -----------------------------------------------------------

    def _push(self, at: float, check: _Check, what: str) -> None:
        heapq.heappush(self._heap, _Due(at, next(self._seq), (check.owner, check.key), check.gen, what))
        if self._wake is not None:
            self._wake.set()

    def _schedule_reap(self, check: _Check) -> None:
        due = sm.reap_due(check.state, check.spec.deregister_critical_after)
        if due is not None:
            self._push(due, check, "reap")

    def _set(self, check: _Check, new: CheckState) -> None:
        old = check.state
        check.state = new
        if new.status is not old.status:
            if check.active:  # a followed check is logged by the replica that runs it
                log.info("check %s/%s is now %s", check.owner, check.key, new.status.api_name)
            self._schedule_reap(check)
        if new.status is not old.status or new.output != old.output:
            owner = self._owners.get(check.owner)
            if owner is not None:
                try:
                    owner.on_change(check.key, old, new)
                except Exception:
                    log.exception("check owner %s failed to take a change", check.owner)

    def run_due(self) -> float | None:
        """Start whatever is due by `clock()` (probes, TTL expiries, reaps); seconds until the next is due.

        `run` calls it whenever something is due or a check was added; tests call it with a clock they move.
        """
        now = self.clock()
        while self._heap and self._heap[0].at <= now:
            self._dispatch(heapq.heappop(self._heap), now)
        return max(0.0, self._heap[0].at - now) if self._heap else None

    async def run(self) -> None:
        self._wake = asyncio.Event()
        while True:
            timeout = self.run_due()
            self._wake.clear()
            try:  # asyncio.timeout, not wait_for: wait_for swallows a cancel that comes as the wait ends
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _dispatch(self, due: _Due, now: float) -> None:
        check = self._checks.get(due.ref)
        if check is None:
            return
        if due.what == "reap":
            when = sm.reap_due(check.state, check.spec.deregister_critical_after)
            if when is not None and when <= now + 1e-6:
                self._reap(check)
            return
        if due.gen != check.gen or not check.active:
            return
        if due.what == "ttl":
            self._set(check, sm.set_status(check.state, Health.CRITICAL, "TTL expired", now=now))
            return
        # probe: the next one is due one interval after this one started
        self._push(now + check.spec.interval, check, "probe")
        if check.running or self._closed:
            return
        check.running = True
        self.probes_started += 1
        task = asyncio.get_running_loop().create_task(self._probe(check))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(self, check: _Check) -> None:
        try:
            async with self._sem:
                if self._checks.get((check.owner, check.key)) is not check:
                    return
                if check.spec.kind == "http":
                    if self._session is None:
                        self._session = new_session(limit=self.concurrency)
                    result, output = await probe_http(self._session, check.spec, max_output=self.output_max_size)
                else:
                    result, output = await probe_tcp(check.spec)
                self.probes_run += 1
            if self._checks.get((check.owner, check.key)) is not check or not check.active:
                return
            spec = check.spec
            self._set(check, sm.observe(check.state, result, self.clip(output),
                                        success_before_passing=spec.success_before_passing,
                                        failures_before_critical=spec.failures_before_critical,
                                        now=self.clock()))
        except Exception:
            log.exception("check %s/%s failed to run", check.owner, check.key)
        finally:
            check.running = False

    def _reap(self, check: _Check) -> None:
        owner = self._owners.get(check.owner)
        log.info("check %s/%s critical for %gs: deregistering", check.owner, check.key,
                 check.spec.deregister_critical_after)
        if owner is not None and owner.on_reap is not None:
            try:
                owner.on_reap(check.key)
            except Exception:
                log.exception("check owner %s failed to reap %s", check.owner, check.key)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._probes):
            task.cancel()
        if self._probes:
            await asyncio.gather(*self._probes, return_exceptions=True)
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def same_probe(a: CheckSpec, b: CheckSpec) -> bool:
    """Re-registering the same probe keeps its status (no flap to critical on every boot script run)."""
    return a.kind == b.kind and a.target == b.target
