"""The per-minute (client, name) counter behind the topology view, on an injected clock."""
import tracemalloc

from meshdns.dns.topology import TopologyCounter, merged


class Clock:
    """The counter's clock; `advance` also rolls the counters, as their run() does at each minute boundary."""

    def __init__(self, now=6000.0):
        self.now = now
        self.counters = []

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds
        for c in self.counters:
            c.roll()


def counter(clock, *, max_keys=1000, keep=15, peers=None):
    c = TopologyCounter(clock=clock, max_keys=max_keys, keep_minutes=keep, peers=peers)
    clock.counters.append(c)
    return c


def test_counts_by_address_and_name_within_a_minute():
    c = counter(Clock())
    for _ in range(3):
        c.count("10.0.0.1", "billing.service.consul.")
    c.count("10.0.0.2", "billing.service.consul.")
    counts, dropped, minutes = c.window(15)
    assert dict(counts) == {("10.0.0.1", "billing.service.consul."): 3, ("10.0.0.2", "billing.service.consul."): 1}
    assert (dropped, minutes) == (0, 1)


def test_windows_take_whole_minutes_the_current_one_included():
    clock = Clock(6000.0)          # minute 100 (started at its 0th second)
    c = counter(clock)
    c.count("a", "x.")
    clock.advance(60)               # minute 101
    c.count("a", "x.")
    c.count("a", "x.")
    clock.advance(59.9)             # still minute 101
    c.count("b", "x.")
    assert c.window(1)[0] == {("a", "x."): 2, ("b", "x."): 1}
    assert c.window(2)[0] == {("a", "x."): 3, ("b", "x."): 1}
    assert c.window(2)[2] == 2
    assert c.window(15)[2] == 2     # minutes counted: only those since the counter started
    clock.advance(0.1)              # minute 102: nothing yet
    assert c.window(1)[0] == {}
    assert c.window(3)[0] == {("a", "x."): 3, ("b", "x."): 1}


def test_minutes_beyond_the_longest_window_are_forgotten():
    clock = Clock()
    c = counter(clock, keep=15)
    c.count("a", "x.")
    clock.advance(14 * 60)
    assert c.window(15)[0] == {("a", "x."): 1}
    clock.advance(60)
    assert c.window(15)[0] == {}
    assert c.window(15)[2] == 15
    assert len(c.buckets()) == 1    # only the (empty) current minute is held


def test_a_minute_holds_at_most_max_keys_pairs_and_counts_the_rest_as_dropped():
    clock = Clock()
    c = counter(clock, max_keys=3)
    for i in range(5):
        c.count(f"10.0.0.{i}", "x.")
    c.count("10.0.0.0", "x.")       # a pair already held still counts
    counts, dropped, _ = c.window(1)
    assert counts == {("10.0.0.0", "x."): 2, ("10.0.0.1", "x."): 1, ("10.0.0.2", "x."): 1}
    assert dropped == 2
    clock.advance(60)                # a new minute has room again
    c.count("10.0.0.4", "x.")
    assert c.window(1)[0] == {("10.0.0.4", "x."): 1}
    assert c.window(2)[1] == 2


def test_memory_stays_bounded_with_100000_distinct_sources():
    clock = Clock()
    c = counter(clock, max_keys=10_000)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(100_000):
            # a new address string per query, as the socket hands them over
            c.count(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", "billing.service.consul.")
        clock.advance(60)
        held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    counts, dropped, _ = c.window(15)
    assert (sum(counts.values()), len(counts), dropped) == (10_000, 10_000, 90_000)
    # a sealed minute holds 10,000 pairs (about 1.4 MB), where 100,000 would take ten times that;
    # with the default 15-minute window that is at most about 20 MB
    assert held < 3 * 2**20, held


def test_a_workers_buckets_are_added_once_each_minute():
    clock = Clock()
    reported = {}
    primary, worker = counter(clock, peers=lambda: [reported]), counter(clock)
    worker.count("10.0.0.1", "x.")
    reported = merged(reported, worker.export(), keep_minutes=15)
    worker.count("10.0.0.1", "x.")
    reported = merged(reported, worker.export(), keep_minutes=15)   # the current minute, replaced
    primary.count("10.0.0.1", "x.")
    assert primary.window(1)[0] == {("10.0.0.1", "x."): 3}
    clock.advance(60)
    worker.count("10.0.0.2", "x.")
    sent = worker.export()
    assert sorted(sent) == [100, 101]                               # the sealed minute once, the current one
    reported = merged(reported, sent, keep_minutes=15)
    assert sorted(worker.export()) == [101]
    assert primary.window(2)[0] == {("10.0.0.1", "x."): 3, ("10.0.0.2", "x."): 1}
    clock.advance(20 * 60)
    reported = merged(reported, worker.export(), keep_minutes=15)
    assert sorted(reported) == [121]
    assert primary.window(15)[0] == {}


def test_tallies_of_two_reply_entries_for_one_name_add_up_and_start_again_each_minute():
    """As the DNS path counts: each reply-cache entry (one name, one client class) holds its own tally."""
    clock = Clock()
    c = counter(clock, max_keys=3)
    recursive, plain = {}, {}
    for tally, address in ((recursive, "10.0.0.1"), (plain, "10.0.0.1"), (plain, "10.0.0.2"), (plain, "10.0.0.2")):
        try:
            tally[address] += 1
        except KeyError:
            c.first(tally, address, "x.")
    c.first({}, "10.0.0.3", "y.")   # a fourth pair: over the cap
    assert c.window(1)[:2] == ({("10.0.0.1", "x."): 2, ("10.0.0.2", "x."): 2}, 1)
    clock.advance(60)
    assert (recursive, plain) == ({}, {})       # sealed into minute 100, counting afresh
    c.first(plain, "10.0.0.2", "x.")
    assert c.window(1)[0] == {("10.0.0.2", "x."): 1}
    assert c.window(2)[0] == {("10.0.0.1", "x."): 2, ("10.0.0.2", "x."): 3}
