"""The forwarder against real upstream DNS servers on 127.0.0.1 (tests/upstream.py).

Queries are real packets parsed by meshdns's wire code, answers are read back
with dnspython; the cache runs on a fake clock where time matters.
"""
import asyncio
import random
import time

import dns.flags
import dns.message
import dns.rcode
import pytest

from meshdns.config import ConfigError
from meshdns.dns.wire import parse_query
from meshdns.forward.cache import ReplyCache
from meshdns.forward.forwarder import Forwarder, from_config
from upstream import BOGUS
from harness import make_config


class Clock:
    def __init__(self):
        self.now = 5000.0

    def __call__(self):
        return self.now


def packet(name, rdtype="A", *, edns=0, qid=None):
    q = dns.message.make_query(name, rdtype, use_edns=edns)
    if qid is not None:
        q.id = qid
    return q.to_wire()


def servers(*ups):
    return tuple(("127.0.0.1", up.port) for up in ups)


def forwarder(*ups, timeout=1.0, strategy="sequential", clock=None, zones=(), **cache):
    opts = dict(max_entries=1000, min_ttl=0, max_ttl=3600, serve_stale=3600)
    opts.update(cache)
    return Forwarder(domains=("consul.",), recursors=servers(*ups), zones=zones, timeout=timeout,
                     strategy=strategy, rng=random.Random(7),
                     cache=ReplyCache(clock=clock or Clock(), **opts))


async def ask(fwd, name, rdtype="A", *, tcp=False, edns=0, qid=None):
    data = packet(name, rdtype, edns=edns, qid=qid)
    reply = await fwd.forward(parse_query(data), data, tcp=tcp)
    return None if reply is None else dns.message.from_wire(reply)


def values(msg):
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


async def test_answer_carries_client_id_and_casing(upstreams):
    up = upstreams().add("www.example.org", "A", "10.1.1.1")
    fwd = forwarder(up)
    msg = await ask(fwd, "WWW.Example.Org.", qid=4321)
    assert msg.id == 4321
    assert msg.question[0].name.to_text() == "WWW.Example.Org."
    assert values(msg) == ["10.1.1.1"]
    assert msg.flags & dns.flags.RA
    seen = up.queries[0]
    assert seen.qname == "www.example.org."   # asked upstream in lower case (one cache entry for all casings)
    assert seen.rd and seen.edns


async def test_failover_in_order_on_servfail_refused_and_timeout(upstreams):
    journal = []
    a = upstreams(name="a", journal=journal)
    b = upstreams(name="b", journal=journal)
    c = upstreams(name="c", journal=journal)
    d = upstreams(name="d", journal=journal)
    for up in (a, b, c, d):
        up.add("www.example.org", "A", f"10.0.0.{ord(up.name[0]) - 96}")
    a.mode, b.mode, c.mode = "servfail", "refused", "silent"
    fwd = forwarder(a, b, c, d, timeout=0.3)
    msg = await ask(fwd, "www.example.org.")
    assert values(msg) == ["10.0.0.4"]
    assert journal == [(n, "www.example.org.") for n in "abcd"]
    assert fwd.stats.replies[(f"127.0.0.1:{a.port}", "SERVFAIL")] == 1
    assert fwd.stats.replies[(f"127.0.0.1:{b.port}", "REFUSED")] == 1
    assert fwd.stats.replies[(f"127.0.0.1:{c.port}", "timeout")] == 1
    assert fwd.stats.replies[(f"127.0.0.1:{d.port}", "NOERROR")] == 1
    assert fwd.stats.latency_count[f"127.0.0.1:{d.port}"] == 1


async def test_first_healthy_upstream_is_the_only_one_asked(upstreams):
    a, b = upstreams(), upstreams()
    a.add("www.example.org", "A", "10.0.0.1")
    fwd = forwarder(a, b)
    for i in range(5):
        await ask(fwd, f"n{i}.example.org.")  # NXDOMAIN is an answer, not a failure
    assert a.count() == 5 and b.count() == 0


async def test_random_strategy_spreads_first_choice(upstreams):
    a, b = upstreams(), upstreams()
    fwd = forwarder(a, b, strategy="random")
    for i in range(30):
        await ask(fwd, f"n{i}.example.org.")
    assert a.count() + b.count() == 30
    assert a.count() >= 3 and b.count() >= 3


async def test_slow_upstream_within_timeout_is_waited_for(upstreams):
    a, b = upstreams(), upstreams()
    a.add("www.example.org", "A", "10.0.0.1")
    a.delay = 0.2
    fwd = forwarder(a, b, timeout=2.0)
    assert values(await ask(fwd, "www.example.org.")) == ["10.0.0.1"]
    assert b.count() == 0


async def test_timeout_then_servfail_when_all_fail(upstreams):
    a, b = upstreams(), upstreams()
    a.mode, b.mode = "silent", "servfail"
    fwd = forwarder(a, b, timeout=0.3)
    started = time.monotonic()
    assert await ask(fwd, "www.example.org.") is None   # the handler answers SERVFAIL
    assert time.monotonic() - started >= 0.3             # it did wait for the silent one
    assert a.count() == 1 and b.count() == 1
    a.delay, a.mode = 1.0, "answer"                      # too slow counts as a timeout too
    assert await ask(fwd, "www.example.org.") is None


async def test_unreachable_upstream_fails_over(upstreams):
    b = upstreams().add("www.example.org", "A", "10.0.0.2")
    dead = upstreams()
    dead.stop()                                          # nothing listens there any more
    fwd = forwarder(dead, b, timeout=1.0)
    assert values(await ask(fwd, "www.example.org.")) == ["10.0.0.2"]


async def test_tc_is_retried_over_tcp(upstreams):
    up = upstreams()
    addresses = [f"10.2.{i // 250}.{i % 250 + 1}" for i in range(80)]
    up.add("big.example.org", "A", *addresses)
    up.tc_over_udp = True
    fwd = forwarder(up)
    msg = await ask(fwd, "big.example.org.", tcp=True)   # the client itself came over TCP
    assert len(values(msg)) == 80
    assert up.count(transport="udp") == 0 and up.count(transport="tcp") == 1
    up.add("big2.example.org", "A", *addresses)
    msg = await ask(fwd, "big2.example.org.")            # a UDP client: UDP, TC, then TCP
    assert len(values(msg)) == 80
    assert [q.transport for q in up.queries if q.qname == "big2.example.org."] == ["udp", "tcp"]
    assert fwd.stats.tcp_retries[up.address] == 1


async def test_mismatched_replies_are_ignored(upstreams):
    up = upstreams().add("www.example.org", "A", "10.0.0.1")
    up.spoof = True   # a wrong-ID reply and a wrong-question reply arrive before the real one
    fwd = forwarder(up)
    msg = await ask(fwd, "www.example.org.")
    assert values(msg) == ["10.0.0.1"] and BOGUS not in values(msg)
    assert fwd.stats.ignored[up.address] == 2
    msg = await ask(fwd, "www.example.org.", tcp=True, rdtype="A", edns=None)  # cached now
    assert values(msg) == ["10.0.0.1"]


async def test_only_mismatched_replies_means_timeout_and_failover(upstreams):
    a, b = upstreams(), upstreams()
    a.spoof = a.spoof_only = True
    b.add("www.example.org", "A", "10.0.0.2")
    fwd = forwarder(a, b, timeout=0.3)
    assert values(await ask(fwd, "www.example.org.")) == ["10.0.0.2"]
    assert fwd.stats.replies[(a.address, "timeout")] == 1


async def test_ids_and_source_ports_are_random(upstreams):
    up = upstreams()
    fwd = forwarder(up)
    for i in range(30):
        await ask(fwd, f"n{i}.example.org.", qid=1)
    assert len({q.id for q in up.queries}) >= 25
    assert len({q.port for q in up.queries}) >= 25


async def test_cache_hit_does_not_reach_upstream_and_ttl_ages(upstreams):
    up = upstreams().add("www.example.org", "A", "10.0.0.1", ttl=300)
    clock = Clock()
    fwd = forwarder(up, clock=clock)
    first = await ask(fwd, "www.example.org.")
    assert first.answer[0].ttl == 300
    clock.now += 100
    second = await ask(fwd, "WWW.example.org.")
    assert values(second) == ["10.0.0.1"] and second.answer[0].ttl == 200
    assert second.question[0].name.to_text() == "WWW.example.org."
    assert up.count() == 1
    await ask(fwd, "www.example.org.", "AAAA")          # another type is another key
    assert up.count() == 2
    clock.now += 200                                     # expired: asked again
    await ask(fwd, "www.example.org.")
    assert up.count() == 3
    assert fwd.stats.cache["hit"] == 1 and fwd.stats.cache["miss"] == 3


async def test_negative_answers_are_cached_by_soa_minimum(upstreams):
    up = upstreams(negative_ttl=30, soa_ttl=300)
    clock = Clock()
    fwd = forwarder(up, clock=clock)
    for _ in range(3):
        msg = await ask(fwd, "missing.example.org.")
        assert msg.rcode() == dns.rcode.NXDOMAIN and msg.authority
    assert up.count() == 1
    clock.now += 31
    assert (await ask(fwd, "missing.example.org.")).rcode() == dns.rcode.NXDOMAIN
    assert up.count() == 2


async def test_serve_stale_while_upstream_is_down(upstreams):
    up = upstreams().add("www.example.org", "A", "10.0.0.1", ttl=60)
    clock = Clock()
    fwd = forwarder(up, clock=clock, serve_stale=600, timeout=0.3)
    await ask(fwd, "www.example.org.")
    up.mode = "silent"
    clock.now += 120                                     # expired, within serve_stale
    msg = await ask(fwd, "www.example.org.")
    assert values(msg) == ["10.0.0.1"] and msg.answer[0].ttl == 30
    assert fwd.stats.cache["stale"] == 1
    assert up.count() == 2                               # it did try upstream first
    up.mode = "answer"                                   # back: fresh again
    up.add("www.example.org", "A", "10.0.0.9", ttl=60)
    assert values(await ask(fwd, "www.example.org.")) == ["10.0.0.9"]
    up.mode = "servfail"
    clock.now += 60 + 601                                # beyond serve_stale: nothing to serve
    assert await ask(fwd, "www.example.org.") is None


async def test_concurrent_identical_misses_share_one_upstream_query(upstreams):
    up = upstreams().add("www.example.org", "A", "10.0.0.1")
    up.delay = 0.3
    fwd = forwarder(up)
    replies = await asyncio.gather(*(ask(fwd, "www.example.org.", qid=i) for i in range(100)))
    assert up.count() == 1
    assert [r.id for r in replies] == list(range(100))
    assert all(values(r) == ["10.0.0.1"] for r in replies)
    assert fwd.stats.cache["miss"] == 1 and fwd.stats.cache["shared"] == 99


async def test_do_bit_is_part_of_the_key_and_passed_upstream(upstreams):
    up = upstreams().add("www.example.org", "A", "10.0.0.1")
    fwd = forwarder(up)
    plain = packet("www.example.org.")
    await fwd.forward(parse_query(plain), plain, tcp=False)
    q = dns.message.make_query("www.example.org.", "A", want_dnssec=True)
    await fwd.forward(parse_query(q.to_wire()), q.to_wire(), tcp=False)
    assert [s.do for s in up.queries] == [False, True]


async def test_zone_rules_longest_suffix_and_own_domain(upstreams):
    rec, cluster, inner = upstreams(), upstreams(), upstreams()
    fwd = forwarder(rec, zones=(("cluster.local.", servers(cluster)),
                                ("svc.cluster.local.", servers(inner))))
    assert fwd.servers_for("web.default.svc.cluster.local.") == servers(inner)
    assert fwd.servers_for("node1.cluster.local.") == servers(cluster)
    assert fwd.servers_for("cluster.local.") == servers(cluster)
    assert fwd.servers_for("notcluster.local.") == servers(rec)
    assert fwd.servers_for("example.org.") == servers(rec)
    assert not fwd.handles("web.service.consul.") and not fwd.handles("consul.")
    assert await ask(fwd, "web.service.consul.") is None
    assert rec.count() == 0
    zones_only = Forwarder(domains=("consul.",), zones=(("cluster.local.", servers(cluster)),))
    assert zones_only.handles("a.cluster.local.") and not zones_only.handles("example.org.")


def test_from_config(tmp_path):
    assert from_config(make_config(tmp_path)) is None   # the default: nothing to forward to
    cfg = make_config(tmp_path, {"forwarding": {"recursors": ["127.0.0.1:5353"]}})
    assert from_config(cfg).handles("example.org.")
    with pytest.raises(ConfigError, match=r"forwarding.zone\[0\].name: 'x.mesh.internal.' is inside our own"):
        make_config(tmp_path, {"alt_domain": "mesh.internal",
                               "forwarding": {"zone": [{"name": "x.mesh.internal", "servers": ["127.0.0.1"]}]}})


async def test_root_ns_probe_has_a_deadline_and_warms_the_cache(upstreams):
    up = upstreams().add(".", "NS", "a.root-servers.net.")
    up.delay = 0.7                                        # slower than the probe deadline
    fwd = forwarder(up, timeout=2.0)
    assert await ask(fwd, ".", "NS") is None              # SERVFAIL before CoreDNS gives up (1 s)
    deadline = time.monotonic() + 5                       # the upstream query goes on...
    while not fwd.stats.replies[(up.address, "NOERROR")] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    msg = await ask(fwd, ".", "NS")                       # ...and the next probe is a cache hit
    assert values(msg) == ["a.root-servers.net."]
    assert up.count() == 1
