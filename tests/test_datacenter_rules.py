"""The pure rules behind datacenters: which prepared query a name runs, what a template makes of it,
the failover order, and the index of the next blocking query. Tables in, values out."""
import random

import pytest

from meshdns.catalog.model import Instance, PreparedQuery, SourceState
from meshdns.catalog.queries import execute, failover_datacenters, find, render
from meshdns.catalog.store import Store
from meshdns.sources.consul_watch import jittered_wait, next_index

STATIC = PreparedQuery(id="0a1b", name="geo-redis", service="billing")
GEO = PreparedQuery(id="1c2d", name="geo-", service="${name.suffix}", template=True)
GEO_DB = PreparedQuery(id="2e3f", name="geo-db-", service="${match(1)}", tags=("${match(2)}",), template=True,
                       regexp=r"^geo-db-([a-z]+)-(v\d+)$", remove_empty_tags=True)
ALL = PreparedQuery(id="3a4b", name="", service="${name.full}", template=True)
UNNAMED = PreparedQuery(id="4c5d", name="", service="redis")
QUERIES = {q.id: q for q in (STATIC, GEO, GEO_DB, ALL, UNNAMED)}


@pytest.mark.parametrize("name,expected", [
    ("0a1b", STATIC), ("4c5d", UNNAMED),         # by ID first
    ("geo-redis", STATIC),                       # an exact name beats every template
    ("GEO-REDIS", STATIC),
    ("geo-web", GEO), ("geo-db-x-v1", GEO_DB),   # the longest prefix
    ("geo-db", GEO), ("billing", ALL), ("", ALL),
])
def test_find(name, expected):
    assert find(QUERIES, name) is expected


def test_find_without_a_catch_all():
    assert find({STATIC.id: STATIC, UNNAMED.id: UNNAMED}, "billing") is None


@pytest.mark.parametrize("query,name,service,tags", [
    (GEO, "geo-Billing", "billing", ()),
    (GEO_DB, "geo-db-billing-v2", "billing", ("v2",)),
    (GEO_DB, "geo-db-nomatch", "", ()),          # no match: every ${match(N)} is empty (and the tag removed)
    (ALL, "redis", "redis", ()),
    (PreparedQuery(id="x", name="p-", service="${name.prefix}${name.suffix}", tags=("${match(0)}",),
                   template=True), "p-q", "p-q", ("",)),
    (STATIC, "anything", "billing", ()),
])
def test_render(query, name, service, tags):
    out = render(query, name)
    assert (out.service, out.tags) == (service, tags)


@pytest.mark.parametrize("nearest,dcs,expected", [
    (0, (), []),
    (1, (), ["dc3"]),
    (2, ("dc2", "dc9"), ["dc3", "dc2", "dc9"]),  # NearestN first, then Datacenters, each once
    (5, ("dc1",), ["dc3", "dc2"]),               # never ours, N beyond the peers is all of them
])
def test_failover_order(nearest, dcs, expected):
    q = PreparedQuery(id="x", service="db", nearest_n=nearest, datacenters=dcs)
    assert failover_datacenters(q, local="dc1", peers=("dc3", "dc2")) == expected


def test_execute_counts_the_datacenters_asked():
    store = Store(datacenter="dc1")
    store.publish("t", SourceState(services={
        ("dc2", "db"): (Instance(id="a", service="db", datacenter="dc2", address="10.2.0.1", tags=("v1",)),),
        ("dc3", "db"): (Instance(id="b", service="db", datacenter="dc3", address="10.3.0.1", tags=("v2",)),)}))
    snap = store.snapshot
    q = PreparedQuery(id="x", service="db", datacenters=("dc2", "dc3"), tags=("!v1",))
    out = execute(snap, q, peers=())
    assert (out.datacenter, out.failovers, out.tried, [i.id for i in out.instances]) == \
        ("dc3", 2, ("dc1", "dc2", "dc3"), ["b"])
    none = execute(snap, PreparedQuery(id="y", service="db", tags=("v9",), datacenters=("dc2",)), peers=())
    assert (none.datacenter, none.failovers, none.instances) == ("dc2", 1, ())


@pytest.mark.parametrize("last,returned,expected", [
    (None, 7, 7),     # the first answer
    (7, 9, 9),        # moved on
    (9, 9, 9),        # a wait that timed out
    (9, 4, 0),        # went backwards: start over with a plain read
    (None, 0, 1),     # never 0 (which would not block)
    (0, 0, 1),
    (1, 0, 0),        # a real step back from 1 to 0 is still a reset
])
def test_next_index(last, returned, expected):
    assert next_index(last, returned) == expected


def test_jittered_wait_stays_within_the_last_sixteenth():
    rng = random.Random(3)
    waits = [jittered_wait(160.0, rng) for _ in range(1000)]
    assert 150.0 <= min(waits) < 151.0 and 159.0 < max(waits) <= 160.0


class ScriptedPeer:
    """Answers BlockingLoop's requests from a script: an exception to raise or an (index, body) to return;
    when the script is over, SystemExit leaves the loop (it retries every Exception)."""

    url = "http://peer"

    def __init__(self, script):
        self.script = list(script)
        self.asked = []

    async def get(self, path, *, index, wait):
        if not self.script:
            raise SystemExit
        self.asked.append(index)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


async def test_blocking_loop_backs_off_on_errors_and_follows_the_index():
    from meshdns.sources.backoff import Backoff
    from meshdns.sources.consul_watch import BlockingLoop, PeerError

    peer = ScriptedPeer([PeerError("down")] * 4 + [(12, "a"), (12, "a"), (3, "b"), (3, "b"), (0, "c"), (0, "d"),
                                                   PeerError("blip"), (7, "e"), (7, "f")])
    slept, answers, errors = [], [], []

    async def sleep(seconds):
        slept.append(seconds)

    rng = random.Random(1)
    loop = BlockingLoop(peer, "/v1/health/service/db", wait=60, rng=rng, sleep=sleep,
                        backoff=Backoff(initial=0.5, cap=2.0, rng=rng), on_answer=answers.append,
                        on_error=errors.append)
    with pytest.raises(SystemExit):
        await loop.run()
    assert errors == ["down"] * 4 + ["blip"]
    # doubling up to the cap, each 80-100% of its step; a blocking query that worked starts it over
    steps = [0.5, 1.0, 2.0, 2.0, 0.5]
    assert len(slept) == 5 and all(0.8 * step <= s <= step for s, step in zip(slept, steps)), slept
    # plain reads until the first answer; 12 twice; back to 3 and to 0: a plain read each; 0 is asked as 1;
    # after an error a plain read again
    assert peer.asked == [0, 0, 0, 0, 0, 12, 12, 0, 3, 0, 1, 0, 7]
    assert loop.index == 7
    assert answers == ["a", "a", "b", "b", "c", "d", "e", "f"]
