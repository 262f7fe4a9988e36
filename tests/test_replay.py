"""Replayed UDP replies are the fast path's replies, byte for byte, and never outlive what they were built from."""
import random
from dataclasses import replace

import dns.flags
import dns.message
import pytest

from test_fastpath import NAMES, handler, shapes  # noqa: F401  (the fixture)
from meshdns.catalog.model import Health, Instance, SourceState, Split, SplitTarget
from meshdns.dns.handler import RecursionPolicy
from meshdns.dns.replay import ReplayTable
from meshdns.forward.forwarder import Forwarder

CLIENT = ("127.0.0.1", 5353)


def _ask_until_replayed(handler, wire, ra=False):
    """Ask twice through the handler (the second sight renders the replies); True if they were kept."""
    for _ in range(2):
        handler.handle(wire, CLIENT, tcp=False)
    return wire[2:] in handler.fast.replay.tables[ra]


@pytest.mark.parametrize("name,qtype", NAMES, ids=[f"{n}/{t}" for n, t in NAMES])
def test_replayed_replies_are_the_general_paths(handler, name, qtype):
    kept = 0
    for q in shapes(name, qtype):
        wire = q.to_wire()
        if not _ask_until_replayed(handler, wire):
            continue
        kept += 1
        for seed in range(6):
            handler.rng = random.Random(seed)
            replayed = handler.fast.replay.reply(wire, False, handler.store.snapshot, handler.rng)
            handler.rng = random.Random(seed)
            general = handler.handle_general(wire, CLIENT, tcp=False)
            assert replayed is not None and replayed[0] == general
            # a new ID is put in front of the same reply
            other = b"\xbe\xef" + wire[2:]
            handler.rng = random.Random(seed)
            assert handler.handle(other, CLIENT, tcp=False) == b"\xbe\xef" + general[2:]
    # answers that are not a uniform shuffle of at most four records (web has weights 1..5, billing
    # splits onto web, big has 120 instances) are never replayed; every other name in every shape is
    weighted = {"web.service.consul", "web.service.mesh.internal", "big.service.consul", "billing.service.consul"}
    assert kept == (0 if name.lower() in weighted else 3)


def test_split_answers_replayed_with_the_same_shares(handler):
    """90/10 split: the chosen side follows the seeded RNG exactly as the general path does."""
    v2 = tuple(Instance(f"v2-{i}", "checkout-v2", "dc1", f"10.6.0.{i}", 80) for i in range(1, 4))
    handler.store.publish("v2", SourceState(services={("dc1", "checkout-v2"): v2}, splits={"checkout": Split(
        "checkout", (SplitTarget("legacy-billing", 90), SplitTarget("checkout-v2", 10)))}))
    wire = dns.message.make_query("checkout.service.consul", "A", use_edns=False).to_wire()
    assert _ask_until_replayed(handler, wire)
    sides = {"replay": [], "general": []}
    for seed in range(300):
        handler.rng = random.Random(seed)
        sides["replay"].append(handler.handle(wire, CLIENT, tcp=False))
        handler.rng = random.Random(seed)
        sides["general"].append(handler.handle_general(wire, CLIENT, tcp=False))
    assert sides["replay"] == sides["general"]
    first = [dns.message.from_wire(r).answer[0][0].to_text() for r in sides["replay"]]
    assert 0 < sum(a.startswith("10.6.0.") for a in first) < 100  # both sides served, the small one rarely


def test_a_catalog_change_is_served_at_once(handler):
    wire = dns.message.make_query("legacy-billing.service.consul", "A", use_edns=False).to_wire()
    assert _ask_until_replayed(handler, wire)
    before = {rr.to_text() for rr in dns.message.from_wire(handler.handle(wire, CLIENT, tcp=False)).answer[0]}
    state = handler.store.state("zones")
    key = next(k for k in state.services if k[1] == "legacy-billing")
    insts = state.services[key]
    handler.store.publish("zones", replace(state, services={**state.services, key: (
        replace(insts[0], health=Health.CRITICAL),) + insts[1:]}))
    after = {rr.to_text() for rr in dns.message.from_wire(handler.handle(wire, CLIENT, tcp=False)).answer[0]}
    assert len(after) == len(before) - 1 and after < before


def test_case_is_echoed_as_asked(handler):
    for name in ("legacy-billing.service.consul", "LEGACY-billing.Service.consul"):
        wire = dns.message.make_query(name, "A", use_edns=False).to_wire()
        assert _ask_until_replayed(handler, wire)
        reply = dns.message.from_wire(handler.handle(wire, CLIENT, tcp=False))
        assert reply.question[0].name.to_text() == name + "."


def test_a_packet_seen_once_is_not_rendered(handler):
    wire = dns.message.make_query("legacy-billing.service.consul", "A", use_edns=False).to_wire()
    handler.handle(wire, CLIENT, tcp=False)
    assert wire[2:] not in handler.fast.replay.tables[False]
    handler.handle(wire, CLIENT, tcp=True)     # TCP answers are never kept
    assert wire[2:] not in handler.fast.replay.tables[False]


def test_recursion_offered_only_to_allowed_clients(handler):
    """RA is per client: a reply kept for an allowed client must not reach another one."""
    handler.forwarder = Forwarder(domains=("consul.",))
    handler.fast.forward_hit = handler._forward_hit
    handler.recursion = RecursionPolicy(("127.0.0.0/8",))
    wire = dns.message.make_query("legacy-billing.service.consul", "A", use_edns=False).to_wire()
    inside, outside = ("127.0.0.1", 5353), ("198.51.100.7", 5353)
    for _ in range(3):
        assert dns.message.from_wire(handler.handle(wire, inside, tcp=False)).flags & dns.flags.RA
    for _ in range(3):
        assert not dns.message.from_wire(handler.handle(wire, outside, tcp=False)).flags & dns.flags.RA
    for _ in range(3):
        assert dns.message.from_wire(handler.handle(wire, inside, tcp=False)).flags & dns.flags.RA
    assert wire[2:] in handler.fast.replay.tables[True] and wire[2:] in handler.fast.replay.tables[False]


def test_kept_replies_stay_within_the_byte_budget(handler):
    handler.fast.replay = ReplayTable(budget=4000)
    extra = {("dc1", f"s{i}"): tuple(Instance(f"s{i}-{j}", f"s{i}", "dc1", f"10.7.{i}.{j}", 80) for j in range(3))
             for i in range(40)}
    handler.store.publish("budget", SourceState(services=extra, splits={"x": Split("x", (SplitTarget("s1", 1),))}))
    wires = [dns.message.make_query(f"s{i}.service.consul", "A", use_edns=False).to_wire() for i in range(40)]
    for wire in wires:
        for _ in range(3):
            reply = dns.message.from_wire(handler.handle(wire, CLIENT, tcp=False))
            assert len(reply.answer[0]) == 3
        assert wire[2:] in handler.fast.replay.tables[False]
        assert 0 < handler.fast.replay.size <= 4000
    assert 0 < sum(w[2:] in handler.fast.replay.tables[False] for w in wires) < 40


def test_replies_outlive_changes_to_other_services_but_the_soa_serial_moves(handler):
    wire = dns.message.make_query("legacy-billing.service.consul", "A", use_edns=False).to_wire()
    nx = dns.message.make_query("nope.service.consul", "A", use_edns=False).to_wire()
    assert _ask_until_replayed(handler, wire) and _ask_until_replayed(handler, nx)
    kept = handler.fast.replay.tables[False][wire[2:]]
    state = handler.store.state("test")
    web = state.services[("dc1", "web")]
    handler.store.publish("test", replace(state, services={**state.services, ("dc1", "web"): web[1:]}))
    version = handler.store.snapshot.version
    assert dns.message.from_wire(handler.handle(wire, CLIENT, tcp=False)).answer
    assert handler.fast.replay.tables[False][wire[2:]] is kept and kept.version == version  # not rendered again
    assert dns.message.from_wire(handler.handle(nx, CLIENT, tcp=False)).authority[0][0].serial == version


def test_forwarded_replays_match_the_forwarder_second_by_second(handler):
    """A kept upstream reply shows, at every age, the TTLs the forwarder itself would render, and is let go
    when the cache entry expires."""
    from test_forward_cache import Clock, upstream_reply
    from meshdns.dns.wire import parse_query
    from meshdns.forward.cache import ReplyCache
    from meshdns.forward.message import lower_question, parse_reply

    clock = Clock()
    forwarder = Forwarder(domains=("consul.",), recursors=(("127.0.0.1", 53),), cache=ReplyCache(
        max_entries=100, clock=clock))
    handler.forwarder = forwarder
    handler.fast.forward_hit = handler._forward_hit
    handler.fast.forward_countdown = forwarder.countdown
    handler.recursion = RecursionPolicy(("127.0.0.0/8",))
    wire = dns.message.make_query("Www.Example.org", "A", use_edns=0).to_wire()
    question = lower_question(parse_query(wire).question)
    forwarder.cache.put(("www.example.org.", 1, 1, False), parse_reply(upstream_reply(question, 7, answers=[
        ("www.example.org.", 9, "CNAME", "edge.example.org."), ("edge.example.org.", 4, "A", "192.0.2.8")]),
        qid=7, question=question))
    for _ in range(2):
        handler.handle(wire, CLIENT, tcp=False)
    assert wire[2:] in handler.fast.replay.forward
    seen = set()
    for step in range(12):
        clock.now = 1000.0 + step * 0.37
        expected = forwarder.cached(parse_query(wire))
        replayed = handler.fast.replay.forwarded(wire, handler.store.snapshot, clock.now)
        if expected is None:   # the entry lives as long as its lowest TTL
            assert replayed is None and wire[2:] not in handler.fast.replay.forward
            continue
        assert replayed is not None and replayed[0] == expected
        seen.add(tuple(rr.ttl for rr in dns.message.from_wire(expected).answer))
    assert {(9, 4), (8, 3), (7, 2), (6, 1)} <= seen
