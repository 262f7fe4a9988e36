"""The check state machine as tables: (thresholds, start, results) -> statuses. No sockets, no clocks."""
import pytest

from meshdns.catalog.model import Health
from meshdns.health import state as sm

P, W, C = Health.PASSING, Health.WARNING, Health.CRITICAL


def run(start, results, *, sbp=0, fbc=0):
    st = sm.initial(start, now=0.0)
    seen = []
    for t, r in enumerate(results, 1):
        st = sm.observe(st, r, f"result {t}", success_before_passing=sbp, failures_before_critical=fbc, now=float(t))
        seen.append(st.status)
    return seen, st


@pytest.mark.parametrize("start, results, sbp, fbc, expected", [
    # no thresholds: the status follows every result
    (C, [P, C, W, P], 0, 0, [P, C, W, P]),
    (C, [P, C, W, P], 1, 1, [P, C, W, P]),
    # SuccessBeforePassing=3: three in a row before passing; a failure restarts the count
    (C, [P, P, P, P], 3, 0, [C, C, P, P]),
    (C, [P, P, C, P, P, P], 3, 0, [C, C, C, C, C, P]),
    # warning counts as a success (Consul), and is reported as warning once over the threshold
    (C, [W, P, W], 3, 0, [C, C, W]),
    # FailuresBeforeCritical=2: one failure is tolerated, two in a row are not
    (P, [C, P, C, C, C], 0, 2, [P, P, P, C, C]),
    (P, [C, C], 0, 3, [P, P]),
    # both thresholds
    (P, [C, C, P, P, C], 2, 2, [P, C, C, P, P]),
    # a check that starts passing (Status: passing) stays passing on success
    (P, [P, P], 5, 0, [P, P]),
])
def test_thresholds(start, results, sbp, fbc, expected):
    seen, _ = run(start, results, sbp=sbp, fbc=fbc)
    assert seen == expected


def test_output_only_changes_with_the_status():
    _, st = run(C, [P, P], sbp=3)
    assert st.status is C and st.output == ""
    _, st = run(C, [P, P, P], sbp=3)
    assert st.status is P and st.output == "result 3"


@pytest.mark.parametrize("results, since", [
    ([C], 1.0),               # critical from the first failure
    ([C, C, C], 1.0),         # stays at the time it became critical
    ([C, P, C], 3.0),         # leaving critical resets it
    ([P], None),
])
def test_critical_since(results, since):
    st = sm.initial(P, now=0.0)
    for t, r in enumerate(results, 1):
        st = sm.observe(st, r, "", now=float(t))
    assert st.critical_since == since


def test_initial_critical_counts_from_creation():
    st = sm.initial(C, now=5.0)
    assert st.critical_since == 5.0
    assert sm.reap_due(st, 30.0) == 35.0
    assert sm.reap_due(st, 0.0) is None
    assert sm.reap_due(sm.initial(P, now=5.0), 30.0) is None


@pytest.mark.parametrize("before, status, after_status", [(C, P, P), (P, C, C), (P, W, W), (W, C, C)])
def test_ttl_updates_ignore_thresholds(before, status, after_status):
    st = sm.initial(before, now=0.0)
    st = sm.set_status(st, status, "note", now=1.0)
    assert st.status is after_status and st.output == "note"
    assert (st.critical_since is not None) == (after_status is C)


def test_maintenance_is_not_a_probe_result():
    with pytest.raises(ValueError):
        sm.observe(sm.initial(P, now=0), Health.MAINTENANCE, "", now=1)
    with pytest.raises(ValueError):
        sm.set_status(sm.initial(P, now=0), Health.MAINTENANCE, "", now=1)
