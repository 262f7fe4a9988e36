"""The sans-IO parts of forwarding: reply validation, rendering, and the cache's rules.

Replies are built with dnspython (independent of meshdns's wire code); the
cache runs on a fake clock, so expiry is shown without sleeping.
"""
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
from hypothesis import given, settings, strategies as st

from meshdns.dns.wire import parse_query
from meshdns.forward.cache import STALE_TTL, ReplyCache
from meshdns.forward.message import build_query, lower_question, parse_reply, render


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def client_query(name="www.Example.ORG.", rdtype="A", *, edns=0, do=False, qid=4242):
    q = dns.message.make_query(name, rdtype, use_edns=edns, want_dnssec=do, id=qid)
    return parse_query(q.to_wire())


def upstream_reply(question: bytes, qid: int, *, answers=(), rcode=0, soa=None, tc=False, edns=True):
    """A reply to build_query(question) as an upstream would send it."""
    q = dns.message.from_wire(build_query(question, qid=qid, do=False))
    r = dns.message.make_response(q)
    if not edns:
        r.use_edns(False)
    r.set_rcode(rcode)
    for name, ttl, rdtype, value in answers:
        r.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, value))
    if soa is not None:
        soa_ttl, minimum = soa
        r.authority.append(dns.rrset.from_text("example.org.", soa_ttl, "IN", "SOA",
                                               f"ns.example.org. h.example.org. 1 2 3 4 {minimum}"))
    if tc:
        r.flags |= dns.flags.TC
    return r.to_wire()


def parsed(query, **kw):
    question = lower_question(query.question)
    reply = parse_reply(upstream_reply(question, 7, **kw), qid=7, question=question)
    assert reply is not None
    return reply


# -- validation ----------------------------------------------------------------


def test_reply_must_match_id_and_question():
    query = client_query()
    question = lower_question(query.question)
    good = upstream_reply(question, 7, answers=[("www.example.org.", 60, "A", "10.0.0.1")])
    assert parse_reply(good, qid=7, question=question) is not None
    assert parse_reply(good, qid=8, question=question) is None                      # wrong ID
    other = lower_question(client_query("www.example.net.").question)
    assert parse_reply(good, qid=7, question=other) is None                         # wrong name
    aaaa = lower_question(client_query(rdtype="AAAA").question)
    assert parse_reply(good, qid=7, question=aaaa) is None                          # wrong type
    assert parse_reply(build_query(question, qid=7, do=False), qid=7, question=question) is None  # not a response
    assert parse_reply(good[:20], qid=7, question=question) is None                 # truncated junk
    # the name is compared case-insensitively (an upstream may echo 0x20 casing)
    upper = upstream_reply(query.question, 7, answers=[("www.example.org.", 60, "A", "10.0.0.1")])
    assert parse_reply(upper, qid=7, question=question) is not None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_ignored_never_raises(data):
    question = lower_question(client_query().question)
    parse_reply(data, qid=7, question=question)  # returns None or a Reply; must not raise


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=12, max_value=200), st.integers(0, 255))
def test_corrupted_reply_never_raises(cut, byte):
    question = lower_question(client_query().question)
    good = bytearray(upstream_reply(question, 7, answers=[("www.example.org.", 60, "A", "10.0.0.1")],
                                    soa=(300, 60)))
    if cut < len(good):
        good[cut] = byte
    parse_reply(bytes(good[:cut + 5]), qid=7, question=question)


def test_render_uses_client_id_casing_and_flags():
    query = client_query("WwW.ExAmPlE.org.", qid=999)
    reply = parsed(query, answers=[("www.example.org.", 60, "A", "10.0.0.1")])
    out = dns.message.from_wire(render(reply, query, reply.ttls, our_payload=1232, limit=65535))
    assert out.id == 999
    assert out.question[0].name.to_text() == "WwW.ExAmPlE.org."
    assert out.flags & dns.flags.RA and out.flags & dns.flags.RD
    assert [rd.to_text() for rd in out.answer[0]] == ["10.0.0.1"]
    assert out.edns == 0 and out.payload == 1232


def test_render_drops_opt_for_a_client_without_edns():
    query = client_query(edns=None)
    reply = parsed(query, answers=[("www.example.org.", 60, "A", "10.0.0.1")])
    assert reply.end < len(reply.data)      # the upstream sent an OPT: it is not passed on as it came
    out = dns.message.from_wire(render(reply, query, reply.ttls, our_payload=1232, limit=65535))
    assert out.edns == -1 and len(out.additional) == 0
    assert [rd.to_text() for rd in out.answer[0]] == ["10.0.0.1"]


def test_negative_ttl_is_soa_minimum_or_soa_ttl():
    query = client_query()
    assert parsed(query, rcode=dns.rcode.NXDOMAIN, soa=(300, 45)).negative_ttl == 45
    assert parsed(query, rcode=dns.rcode.NXDOMAIN, soa=(20, 45)).negative_ttl == 20


# -- cache ---------------------------------------------------------------------


def make_cache(**kw):
    clock = Clock()
    opts = dict(max_entries=100, min_ttl=0, max_ttl=3600, serve_stale=3600)
    opts.update(kw)
    return ReplyCache(clock=clock, **opts), clock


def served_ttls(entry, query, now):
    """The TTLs a client sees at `now` (None: served stale)."""
    out = dns.message.from_wire(entry.render(query, now, our_payload=1232, limit=65535))
    return [rrset.ttl for rrset in out.answer + out.authority]


def test_positive_answer_lives_for_its_smallest_ttl_and_ages():
    cache, clock = make_cache()
    query = client_query()
    reply = parsed(query, answers=[("www.example.org.", 300, "CNAME", "web.example.org."),
                                   ("web.example.org.", 60, "A", "10.0.0.1")])
    assert cache.put("k", reply)
    clock.now += 25.7
    assert served_ttls(cache.get("k"), query, clock.now) == [275, 35]
    clock.now += 34.3   # 60 s after storing: the smallest TTL is used up
    assert cache.get("k") is None


def test_ttls_are_clamped():
    cache, clock = make_cache(min_ttl=30, max_ttl=100)
    query = client_query()
    cache.put("short", parsed(query, answers=[("www.example.org.", 5, "A", "10.0.0.1")]))
    cache.put("long", parsed(query, answers=[("www.example.org.", 86400, "A", "10.0.0.1")]))
    assert served_ttls(cache.get("short"), query, clock.now) == [30]
    assert served_ttls(cache.get("long"), query, clock.now) == [100]
    clock.now += 29
    assert cache.get("short") is not None
    clock.now += 1
    assert cache.get("short") is None
    clock.now += 70
    assert cache.get("long") is None


def test_negative_answers_cached_by_soa_minimum():
    cache, clock = make_cache()
    query = client_query()
    assert cache.put("nx", parsed(query, rcode=dns.rcode.NXDOMAIN, soa=(300, 45)))
    assert cache.put("nodata", parsed(query, soa=(300, 10)))
    clock.now += 10
    assert cache.get("nodata") is None
    assert cache.get("nx") is not None
    clock.now += 35
    assert cache.get("nx") is None


def test_uncacheable_replies():
    cache, _ = make_cache()
    query = client_query()
    assert not cache.put("a", parsed(query, rcode=dns.rcode.NXDOMAIN))                     # no SOA
    assert not cache.put("b", parsed(query, rcode=dns.rcode.SERVFAIL))
    assert not cache.put("c", parsed(query, tc=True))
    assert not cache.put("d", parsed(query, answers=[("www.example.org.", 0, "A", "10.0.0.1")]))  # TTL 0
    assert len(cache) == 0
    off, _ = make_cache(max_entries=0)
    assert not off.put("e", parsed(query, answers=[("www.example.org.", 60, "A", "10.0.0.1")]))


def test_serve_stale_window():
    cache, clock = make_cache(serve_stale=600)
    query = client_query()
    cache.put("k", parsed(query, answers=[("www.example.org.", 60, "A", "10.0.0.1")]))
    assert cache.get_stale("k") is None        # still fresh: nothing stale to serve
    clock.now += 61
    assert cache.get("k") is None
    stale = cache.get_stale("k")
    assert stale is not None
    assert served_ttls(stale, query, None) == [STALE_TTL]
    clock.now += 600
    assert cache.get_stale("k") is None        # beyond serve_stale: gone


def test_bounded_size_evicts_least_recently_used():
    cache, _ = make_cache(max_entries=3)
    query = client_query()
    reply = parsed(query, answers=[("www.example.org.", 60, "A", "10.0.0.1")])
    for key in "abc":
        cache.put(key, reply)
    cache.get("a")
    cache.put("d", reply)
    assert len(cache) == 3
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in "acd")


def test_ttl_with_top_bit_is_zero():
    query = client_query()
    question = lower_question(query.question)
    wire = bytearray(upstream_reply(question, 7, answers=[("www.example.org.", 60, "A", "10.0.0.1")]))
    reply = parse_reply(bytes(wire), qid=7, question=question)
    wire[reply.ttl_offsets[0]:reply.ttl_offsets[0] + 4] = (0x80000000).to_bytes(4, "big")
    assert parse_reply(bytes(wire), qid=7, question=question).ttls == (0,)


def test_cached_replies_age_by_whole_seconds_and_keep_the_clients_id_and_spelling(upstreams):
    """Repeated queries are answered from the DNS reply cache, which renders the forwarder's entry anew only
    when a whole second of age has passed, for the client's ID and spelling."""
    from meshdns.catalog.store import Store
    from meshdns.dns.clients import RecursionPolicy
    from meshdns.dns.handler import DnsHandler
    from meshdns.dns.resolver import ResolverOptions
    from meshdns.forward.forwarder import Forwarder

    import asyncio

    up = upstreams().add("host.example", "A", "192.0.2.10", ttl=10)
    now = [1000.0]
    fwd = Forwarder(domains=("consul.",), recursors=(("127.0.0.1", up.port),),
                    cache=ReplyCache(max_entries=100, clock=lambda: now[0]))
    handler = DnsHandler(Store(datacenter="dc1"), ResolverOptions(), forwarder=fwd,
                         recursion=RecursionPolicy(("127.0.0.0/8",)))
    upstream_q = dns.message.make_query("host.example.", "A", use_edns=0)
    reply = dns.message.make_response(upstream_q)
    reply.answer.append(dns.rrset.from_text("host.example.", 10, "IN", "A", "192.0.2.9"))
    parsed = parse_reply(reply.to_wire(), qid=upstream_q.id, question=parse_query(upstream_q.to_wire()).question)
    fwd.cache.put(("host.example.", 1, 1, False), parsed)

    def ask(name, qid):
        raw = handler.handle(dns.message.make_query(name, "A", use_edns=0, id=qid).to_wire(), ("127.0.0.1", 53),
                             tcp=False)
        return dns.message.from_wire(raw if isinstance(raw, bytes) else asyncio.run(raw))

    first = ask("host.example.", 1)
    assert first.id == 1 and first.answer[0].ttl == 10
    now[0] += 0.5
    again = ask("HoSt.ExAmPlE.", 2)                       # same second of age
    assert again.id == 2 and again.question[0].name.to_text() == "HoSt.ExAmPlE."
    assert again.answer[0].ttl == 10 and again.answer[0][0].to_text() == "192.0.2.9"
    now[0] += 3.0                                         # 3.5 s old: TTLs count down
    assert ask("host.example.", 3).answer[0].ttl == 7
    assert ask("HoSt.ExAmPlE.", 4).answer[0].ttl == 7
    assert up.count() == 0 and fwd.stats.cache["hit"] == 4   # every answer from the cache counted once
    now[0] += 7.0                                         # expired: not served from a kept reply either
    assert ask("host.example.", 5).answer[0][0].to_text() == "192.0.2.10"
    assert up.count() == 1 and fwd.stats.cache["miss"] == 1
