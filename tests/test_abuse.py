"""Abuse resistance at the DNS port: rate limits, ANY, connection caps, caches under a flood."""
import random
import socket
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from harness import query, rrset_values, wait_until
from meshdns.dns.rrl import RateLimiter
from test_pipeline import handler, store  # noqa: F401  (the fixtures)

CLIENT = ("127.0.0.1", 5353)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_rate_limiter_buckets_per_24_with_slip():
    clock = Clock()
    rrl = RateLimiter(rate=5, exempt=("127.0.0.0/8",), clock=clock, slip=2)
    verdicts = [rrl.check("192.0.2.10") for _ in range(11)]
    assert verdicts[:5] == ["send"] * 5
    assert verdicts[5:] == ["drop", "slip", "drop", "slip", "drop", "slip"]
    assert rrl.check("192.0.2.99") == "drop"      # same /24 shares the bucket
    assert rrl.check("198.51.100.1") == "send"    # another network does not
    assert all(rrl.check("127.0.0.1") == "send" for _ in range(100))  # exempt
    clock.now += 1.0
    assert [rrl.check("192.0.2.10") for _ in range(5)] == ["send"] * 5  # refilled after a second


def test_live_rate_limit_slips_tc_and_tcp_still_answers(start_server):
    """However long sending takes (tokens refill meanwhile), every query is answered, slipped or dropped,
    and exactly every second one over the limit slips."""
    srv = start_server({"dns": {"rrl_responses_per_second": 5, "rrl_exempt": []}})
    rrl = srv.app.handler.rrl
    q = dns.message.make_query("oracle-db.service.consul", "A")
    got = {"answer": 0, "tc": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        for i in range(40):
            q.id = i
            s.sendto(q.to_wire(), ("127.0.0.1", srv.dns_port))
        deadline = time.monotonic() + 20
        # until the server has decided every query and we hold every reply it sent
        while not (rrl.dropped + rrl.slipped + got["answer"] == 40 and got["tc"] == rrl.slipped):
            assert time.monotonic() < deadline, (got, rrl.dropped, rrl.slipped)
            try:
                msg = dns.message.from_wire(s.recv(4096))
            except socket.timeout:
                continue
            got["tc" if msg.flags & dns.flags.TC else "answer"] += 1
    assert got["answer"] >= 5                          # the burst (plus whatever refilled while sending)
    assert got["tc"] == (40 - got["answer"]) // 2      # every 2nd over-limit response slips as TC
    # a real client retries over TCP, which is not limited
    assert rrset_values(query(srv.dns_port, "oracle-db.service.consul", tcp=True)) == ["192.168.30.10"]


def test_any_for_outside_names_is_minimal_and_never_forwarded(start_server):
    srv = start_server({"forwarding": {"recursors": ["127.0.0.1:9"]}})
    msg = query(srv.dns_port, "example.com", "ANY")
    assert msg.rcode() == 0
    assert [(rr.rdtype, rr[0].to_text()) for rr in msg.answer] == [(dns.rdatatype.HINFO, '"RFC8482" ""')]


def test_any_for_catalog_names_comes_from_the_catalog(server):
    msg = query(server.dns_port, "legacy-billing.service.consul", "ANY")
    assert sorted(rrset_values(msg)) == ["192.168.28.213", "192.168.28.214"]


def test_tcp_connection_cap(start_server):
    srv = start_server({"dns": {"tcp_max_connections": 3, "tcp_idle_timeout": "5s"}})
    held = [socket.create_connection(("127.0.0.1", srv.dns_port), timeout=3) for _ in range(3)]
    try:
        wait_until(lambda: len(srv.app.dns.connections) == 3, what="three connections accepted")
        extra = socket.create_connection(("127.0.0.1", srv.dns_port), timeout=3)
        extra.settimeout(3)
        try:
            assert extra.recv(10) == b""   # refused: closed at once
        except ConnectionResetError:
            pass
        extra.close()
    finally:
        for s in held:
            s.close()
    wait_until(lambda: not srv.app.dns.connections, what="the held connections closed")
    assert rrset_values(query(srv.dns_port, "oracle-db.service.consul", tcp=True)) == ["192.168.30.10"]


# -- caches and limits under a flood: least recently used goes first ----------------------


def test_spoofed_sources_from_many_networks_do_not_reset_the_limit_of_an_abusive_one():
    clock = Clock()   # frozen: no token comes back, so any "send" to the abuser is a reset limit
    rrl = RateLimiter(rate=5, exempt=(), clock=clock, slip=2, max_buckets=100)
    assert [rrl.check("192.0.2.10") for _ in range(5)] == ["send"] * 5
    verdicts = []
    for i in range(1000):   # ten times the table, one packet from each of 1000 other /24s
        rrl.check(f"10.{i // 256}.{i % 256}.1")
        if i % 10 == 0:
            verdicts.append(rrl.check("192.0.2.10"))
    assert len(verdicts) == 100 and "send" not in verdicts
    assert verdicts.count("slip") == 50          # still every 2nd over-limit response
    # the networks heard from last keep their buckets (one token used); the oldest, quiet ones are gone
    assert [rrl.check("10.3.231.1") for _ in range(5)] == ["send"] * 4 + ["drop"]
    assert [rrl.check("10.0.0.1") for _ in range(5)] == ["send"] * 5


def test_a_flood_of_one_off_names_keeps_popular_answers_compiled_and_rendered(store):
    from meshdns.dns.handler import DnsHandler
    from test_pipeline import OPTS, kept
    handler = DnsHandler(store, OPTS, max_answers=100, reply_budget=20_000)
    popular = dns.message.make_query("legacy-billing.service.consul", "A", use_edns=False).to_wire()
    client = CLIENT
    expected = {"192.168.28.213", "192.168.28.214"}

    def ask_popular():
        for tcp in (False, True):
            reply = dns.message.from_wire(handler.handle(popular, client, tcp=tcp))
            assert {rr.to_text() for rr in reply.answer[0]} == expected

    for _ in range(2):
        ask_popular()
    compiled, rendered = kept(handler, "legacy-billing.service.consul")
    over_tcp = kept(handler, "legacy-billing.service.consul", tcp=True)
    assert compiled is not None and over_tcp[0] is compiled
    tables = handler.client_class(client[0]).tables
    rng = random.Random(7)
    for i in range(1000):   # ten times the compiled answers kept; several times the reply budget
        wire = dns.message.make_query(f"r{rng.getrandbits(48):x}.service.consul", "A", use_edns=False).to_wire()
        for _ in range(2):
            assert dns.message.from_wire(handler.handle(wire, client, tcp=False)).rcode() == dns.rcode.NXDOMAIN
        if i % 5 == 0:
            ask_popular()
    assert len(handler.answers.table) == 100 and 0 < tables[False].size <= 20_000
    assert kept(handler, "legacy-billing.service.consul") == (compiled, rendered)  # never planned or rendered again
    assert kept(handler, "legacy-billing.service.consul", tcp=True) == over_tcp


def test_a_flood_of_one_off_forwarded_names_keeps_the_popular_ones_cached(store):
    from test_forward_cache import upstream_reply
    from meshdns.dns.clients import RecursionPolicy
    from meshdns.dns.handler import DnsHandler
    from meshdns.dns.wire import parse_query
    from meshdns.forward.cache import ReplyCache
    from meshdns.forward.forwarder import Forwarder
    from meshdns.forward.message import lower_question, parse_reply
    from test_pipeline import OPTS

    clock = Clock()
    forwarder = Forwarder(domains=("consul.",), recursors=(("127.0.0.1", 9),), cache=ReplyCache(
        max_entries=300, clock=clock))
    handler = DnsHandler(store, OPTS, forwarder=forwarder, recursion=RecursionPolicy(("127.0.0.0/8",)))

    def upstream_answered(name):
        """The query for name, its reply cached as if an upstream had just answered it."""
        wire = dns.message.make_query(name, "A", use_edns=0).to_wire()
        question = lower_question(parse_query(wire).question)
        forwarder.cache.put((name.lower(), 1, 1, False), parse_reply(upstream_reply(
            question, 7, answers=[(name, 3600, "A", "192.0.2.8")]), qid=7, question=question))
        return wire

    popular = upstream_answered("www.example.org.")

    def ask(wire):
        reply = handler.handle(wire, CLIENT, tcp=False)
        assert isinstance(reply, bytes), "not answered from the cache: it would go upstream"
        return dns.message.from_wire(reply)

    rng = random.Random(7)
    for i in range(1500):   # five times the cache, with the clock moving: 100 new names a second
        clock.now += 0.01
        wire = upstream_answered(f"r{rng.getrandbits(48):x}.example.org.")
        for _ in range(2):
            ask(wire)
        if i % 5 == 0:   # from the kept reply, which keeps the forwarder's entry in use as its age ticks
            assert ask(popular).answer[0][0].to_text() == "192.0.2.8"
    assert len(forwarder.cache) == 300
    assert forwarder.cache.get(("www.example.org.", 1, 1, False)) is not None
    assert popular[2:] in handler.client_class(CLIENT[0]).tables[False]
