"""The pure check state machine: (state, result, thresholds, now) -> state.

Consul's semantics: a passing or warning result counts as a success and
resets the failure count; a critical result counts as a failure and resets
the success count. The reported status only follows a result once
SuccessBeforePassing successes (or FailuresBeforeCritical failures) are in a
row; below the threshold the previous status and output stay. TTL updates and
TTL expiry set the status directly, as Consul does.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..catalog.model import Health


@dataclass(frozen=True, slots=True)
class CheckState:
    status: Health
    output: str = ""
    successes: int = 0
    failures: int = 0
    critical_since: float | None = None  # monotonic seconds; set while critical


def initial(status: Health, now: float, output: str = "") -> CheckState:
    return CheckState(status=status, output=output,
                      critical_since=now if status is Health.CRITICAL else None)


def _with_status(state: CheckState, status: Health, output: str, now: float) -> CheckState:
    if status is Health.CRITICAL:
        since = state.critical_since if state.status is Health.CRITICAL and state.critical_since is not None else now
    else:
        since = None
    return replace(state, status=status, output=output, critical_since=since)


def observe(state: CheckState, result: Health, output: str, *, success_before_passing: int = 0,
            failures_before_critical: int = 0, now: float) -> CheckState:
    """Fold one probe result into the state."""
    if result is Health.MAINTENANCE:
        raise ValueError("a probe cannot report maintenance")
    if result is Health.CRITICAL:
        state = replace(state, failures=state.failures + 1, successes=0)
        if state.failures >= failures_before_critical:
            return _with_status(state, Health.CRITICAL, output, now)
        return state
    state = replace(state, successes=state.successes + 1, failures=0)
    if state.successes >= success_before_passing:
        return _with_status(state, result, output, now)
    return state


def set_status(state: CheckState, status: Health, output: str, *, now: float) -> CheckState:
    """A TTL update (pass/warn/fail/update) or expiry: no thresholds."""
    if status is Health.MAINTENANCE:
        raise ValueError("status must be passing, warning or critical")
    return _with_status(replace(state, successes=0, failures=0), status, output, now)


def reap_due(state: CheckState, deregister_after: float) -> float | None:
    """When the owner should be removed (monotonic time), or None if it need not be."""
    if deregister_after <= 0 or state.status is not Health.CRITICAL or state.critical_since is None:
        return None
    return state.critical_since + deregister_after
