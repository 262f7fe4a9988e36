"""One answer pipeline: a reply is the same bytes whichever way it is produced (planned anew, from the
reply cache, over TCP, by a worker's copy of the catalog), and kept replies follow the catalog."""
import asyncio
import random
from dataclasses import replace

import dns.flags
import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from harness import ZONES
from meshdns.catalog.model import Health, Instance, SourceState, Split, SplitTarget, Weights
from meshdns.catalog.store import Store
from meshdns.dns.clients import RecursionPolicy
from meshdns.dns.handler import DnsHandler
from meshdns.dns.resolver import ResolverOptions, Soa, plan, realize, soa_record
from meshdns.forward.cache import ReplyCache
from meshdns.forward.forwarder import Forwarder
from meshdns.sources.zonefiles import parse_master
from meshdns.sources.zones import ZonesSource
from meshdns.workers import Replica, full_delta

CLIENT = ("127.0.0.1", 5353)
OPTS = ResolverOptions(domains=("consul.", "mesh.internal."), soa=Soa(min_ttl=3), a_record_limit=0)


@pytest.fixture
def store():
    store = Store(datacenter="dc1")
    ZonesSource(ZONES, store, datacenter="dc1").reload()
    extra = {("dc1", "web"): tuple(Instance(f"web-{i}", "web", "dc1", f"10.9.0.{i}", 80, weights=replace(
        Instance("x", "x", "x").weights, passing=i)) for i in range(1, 6))}
    extra[("dc1", "big")] = tuple(Instance(f"big-{i}", "big", "dc1", f"10.8.{i // 200}.{i % 200}", 80)
                                  for i in range(120))
    extra[("dc1", "five")] = tuple(Instance(f"five-{i}", "five", "dc1", f"10.5.0.{i}", 80) for i in range(5))
    # hostname instances: into our own names, a weighted choice of two CNAMEs, beside an IP instance
    hosted = {"alias": [("oracle-db.service.consul", 1)], "wiki": [("wiki.corp.internal", 1)],
              "hosts": [("a.example.com", 3), ("b.example.com", 1)], "mixed": [("10.7.0.1", 1), ("api.example.com", 1)]}
    for name, members in hosted.items():
        extra[("dc1", name)] = tuple(Instance(f"{name}-{a}", name, "dc1", a, 443, weights=Weights(w, 1))
                                     for a, w in members)
    store.publish("test", SourceState(services=extra, splits={"billing": Split(
        "billing", (SplitTarget("legacy-billing", 90), SplitTarget("web", 10))), "halves": Split(
        "halves", (SplitTarget("five", 1), SplitTarget("redis", 1)))}))
    return store


@pytest.fixture
def handler(store):
    return DnsHandler(store, OPTS)


NAMES = [
    ("legacy-billing.service.consul", "A"), ("legacy-billing.service.consul", "SRV"),
    ("Legacy-Billing.Service.Consul", "SRV"), ("v1.legacy-billing.service.consul", "A"),
    ("_legacy-billing._tcp.service.dc1.consul", "SRV"), ("web.service.consul", "A"), ("web.service.consul", "SRV"),
    ("web.service.mesh.internal", "SRV"), ("billing.service.consul", "A"), ("billing.service.consul", "SRV"),
    ("halves.service.consul", "A"), ("halves.service.consul", "SRV"), ("five.service.consul", "A"),
    ("ledger.service.consul", "AAAA"), ("ledger.service.consul", "A"), ("payments-gateway.service.consul", "A"),
    ("payments-gateway.service.consul", "SRV"), ("nope.service.consul", "A"), ("oracle-db.service.mars.consul", "A"),
    ("billing-vm-1.node.consul", "A"), ("billing-vm-1.node.consul", "TXT"), ("billing-vm-1.node.consul", "ANY"),
    ("c0a81cd5.addr.dc1.consul", "A"), ("consul", "SOA"), ("consul", "NS"), ("consul", "ANY"), ("ns.consul", "A"),
    ("x.y.consul", "HINFO"), ("213.28.168.192.in-addr.arpa", "PTR"), ("intranet.corp.internal", "A"),
    ("wiki.corp.internal", "A"), ("corp.internal", "SOA"), ("nothing.corp.internal", "A"),
    ("_ldap._tcp.corp.internal", "SRV"), ("big.service.consul", "A"), ("big.service.consul", "SRV"),
    ("_redis._primary.consul", "SRV"), ("_redis._tcp.dc1.consul", "A"), ("primary.cache.redis.service.consul", "A"),
    ("alias.service.consul", "A"), ("alias.service.consul", "SRV"), ("wiki.service.consul", "A"),
    ("wiki.service.consul", "SRV"), ("hosts.service.consul", "A"), ("hosts.service.consul", "CNAME"),
    ("mixed.service.consul", "A"), ("mixed.service.consul", "AAAA"), ("mixed.service.consul", "SRV"),
]


def shapes(name, qtype):
    yield dns.message.make_query(name, qtype, use_edns=False, id=4242)
    yield dns.message.make_query(name, qtype, use_edns=0, payload=4096, id=4243)
    yield dns.message.make_query(name, qtype, use_edns=0, payload=1232, want_dnssec=True, id=4244)


def replies(handler, wire, n, *, tcp=False, client=CLIENT):
    """n answers to the same query with new IDs, each with its ID cut off."""
    out = []
    for i in range(n):
        reply = handler.handle(i.to_bytes(2, "big") + wire[2:], client, tcp=tcp)
        assert reply[:2] == i.to_bytes(2, "big")
        out.append(reply[2:])
    return out


def worker_handler(store, seed):
    """A handler over a copy of the catalog made as a worker process makes it."""
    copy = Store(datacenter="dc1")
    Replica(copy).apply(full_delta(store.snapshot))
    assert copy.snapshot.version == store.snapshot.version
    return DnsHandler(copy, OPTS, rng=random.Random(seed))


def resolver_records(store, name, qtype, seed, n):
    """What the resolver answers, as dnspython reads records (independent of meshdns's encoder)."""
    rng, snap = random.Random(seed), store.snapshot
    qname, rdtype = name.lower().rstrip(".") + ".", dns.rdatatype.from_text(qtype)
    p = plan(qname, rdtype, snap, OPTS)
    soa = soa_record(p.soa_domain, snap, OPTS) if p.soa_domain else None
    out = []
    for _ in range(n):
        ans = realize(p, rng, soa)
        out.append([(r.name or qname, r.rtype, r.ttl, dns.rdata.from_wire(dns.rdataclass.IN, r.rtype, r.rdata, 0,
                                                                             len(r.rdata)).to_text())
                    for r in ans.answer])
    return out


def answer_records(raw):
    msg = dns.message.from_wire(b"\0\0" + raw, one_rr_per_rrset=True)
    return [(rrset.name.to_text().lower(), rrset.rdtype, rrset.ttl, rd.to_text())
            for rrset in msg.answer for rd in rrset]


@pytest.mark.parametrize("name,qtype", NAMES, ids=[f"{n}/{t}" for n, t in NAMES])
def test_every_answer_path_agrees(store, name, qtype):
    n = 8
    for q in shapes(name, qtype):
        wire = q.to_wire()
        for seed in range(3):
            def seeded(**kw):
                return DnsHandler(store, OPTS, rng=random.Random(seed), **kw)
            planned = replies(seeded(max_answers=0, reply_budget=0), wire, n)   # nothing kept: each one anew
            cached = replies(seeded(), wire, n)                                  # the first one kept, then reused
            assert cached == planned
            assert replies(worker_handler(store, seed), wire, n) == planned
            assert replies(seeded(), wire, n, tcp=True) == replies(seeded(reply_budget=0), wire, n, tcp=True)
            msg = dns.message.from_wire(b"\0\0" + planned[0])
            assert msg.question[0].name == q.question[0].name      # echoed as asked
            tcp = replies(seeded(), wire, n, tcp=True)
            if not msg.flags & dns.flags.TC:
                assert tcp == planned
            if answer_records(tcp[0]):
                # the records, in order, are the resolver's (decoded by dnspython, not by meshdns)
                assert [answer_records(r) for r in tcp] == resolver_records(store, name, qtype, seed, n)


def test_every_choice_an_answer_allows_is_served(handler):
    """Uniform shuffles and both sides of a split all come round from the reply cache."""
    wire = dns.message.make_query("halves.service.consul", "A", use_edns=False).to_wire()
    orders = {tuple(r for _, _, _, r in answer_records(raw)) for raw in replies(handler, wire, 3000)}
    five = {o for o in orders if o[0].startswith("10.5.")}
    assert len(five) == 120                      # every order of five equal instances
    assert len(orders - five) == 2               # the other side: redis's two instances, both orders


def test_split_sides_follow_the_shares_through_the_cache(handler):
    """90/10 split: the side served from the reply cache follows the seeded RNG as when planned anew."""
    v2 = tuple(Instance(f"v2-{i}", "checkout-v2", "dc1", f"10.6.0.{i}", 80) for i in range(1, 4))
    handler.store.publish("v2", SourceState(services={("dc1", "checkout-v2"): v2}, splits={"checkout": Split(
        "checkout", (SplitTarget("legacy-billing", 90), SplitTarget("checkout-v2", 10)))}))
    wire = dns.message.make_query("checkout.service.consul", "A", use_edns=False).to_wire()
    cached = replies(DnsHandler(handler.store, OPTS, rng=random.Random(5)), wire, 300)
    assert cached == replies(DnsHandler(handler.store, OPTS, rng=random.Random(5), reply_budget=0), wire, 300)
    first = [answer_records(r)[0][3] for r in cached]
    assert 0 < sum(a.startswith("10.6.0.") for a in first) < 100  # both sides served, the small one rarely


def ask(handler, name, qtype="A", *, client=CLIENT, tcp=False, **kw):
    reply = handler.handle(dns.message.make_query(name, qtype, **kw).to_wire(), client, tcp=tcp)
    return dns.message.from_wire(reply if isinstance(reply, bytes) else asyncio.run(reply))


@pytest.fixture
def recursive(store, upstreams):
    """A handler offering recursion to 127.0.0.0/8 only, forwarding to a scripted upstream."""
    up = upstreams().add("gateway.payments.example.com", "A", "203.0.113.7").add("www.example.org", "A", "203.0.113.8")
    forwarder = Forwarder(domains=OPTS.domains, recursors=(("127.0.0.1", up.port),), cache=ReplyCache(max_entries=100))
    return DnsHandler(store, OPTS, forwarder=forwarder, recursion=RecursionPolicy(("127.0.0.0/8",)))


def values(msg):
    return [(rrset.rdtype, rd.to_text()) for rrset in msg.answer for rd in rrset]


def test_a_lone_cname_is_resolved_upstream_only_for_clients_offered_recursion(recursive):
    for _ in range(3):   # never answered from a kept reply without the upstream's records
        assert values(ask(recursive, "payments-gateway.service.consul")) == [
            (dns.rdatatype.CNAME, "gateway.payments.example.com."), (dns.rdatatype.A, "203.0.113.7")]
        assert values(ask(recursive, "payments-gateway.service.consul", client=("198.51.100.7", 53))) == [
            (dns.rdatatype.CNAME, "gateway.payments.example.com.")]


def test_a_zone_cname_to_a_name_elsewhere_is_resolved_upstream_for_clients_offered_recursion(recursive):
    zone = parse_master("ext.test.zone", "$ORIGIN ext.test.\n@ IN SOA ns hm 1 2 3 4 5\nwww IN CNAME www.example.org.\n",
                        default_origin="ext.test.", source="t")
    recursive.store.publish("ext", SourceState(zones={zone.origin: zone}))
    for _ in range(3):
        assert values(ask(recursive, "www.ext.test")) == [(dns.rdatatype.CNAME, "www.example.org."),
                                                           (dns.rdatatype.A, "203.0.113.8")]
        assert values(ask(recursive, "www.ext.test", client=("198.51.100.7", 53))) == [
            (dns.rdatatype.CNAME, "www.example.org.")]


def test_recursion_offered_only_to_allowed_clients(recursive):
    """RA is per client class: a reply kept for an allowed client never reaches another one."""
    inside, outside = ("127.0.0.1", 5353), ("198.51.100.7", 5353)
    for _ in range(3):
        assert ask(recursive, "legacy-billing.service.consul", client=inside).flags & dns.flags.RA
        assert not ask(recursive, "legacy-billing.service.consul", client=outside).flags & dns.flags.RA
        assert ask(recursive, "www.example.org", client=outside).rcode() == dns.rcode.REFUSED
        assert ask(recursive, "www.example.org", client=inside).answer


def kept(handler, name, qtype="A", *, tcp=False):
    """The kept reply entry for a query asked from CLIENT without EDNS, and the compiled answer it renders."""
    wire = dns.message.make_query(name, qtype, use_edns=False).to_wire()
    entry = handler.client_class(CLIENT[0]).tables[tcp].get(wire[2:])
    return (entry.compiled if entry is not None else None), entry


def test_one_service_change_invalidates_only_its_answers(handler):
    assert ask(handler, "oracle-db.service.consul").answer[0][0].to_text() == "192.168.30.10"
    assert len(ask(handler, "web.service.consul").answer[0]) == 5
    ask(handler, "redis.service.consul", use_edns=False)
    redis = kept(handler, "redis.service.consul")
    state = handler.store.state("test")
    web = state.services[("dc1", "web")]
    handler.store.publish("test", replace(state, services={**state.services, ("dc1", "web"): (
        replace(web[0], health=Health.CRITICAL),) + web[1:]}))
    assert len(ask(handler, "web.service.consul").answer[0]) == 4           # the change is served at once
    ask(handler, "redis.service.consul", use_edns=False)
    assert kept(handler, "redis.service.consul") == redis and None not in redis   # neither planned nor rendered again
    nx = ask(handler, "nope.service.consul")
    assert nx.authority[0][0].serial == handler.store.snapshot.version  # SOA serial follows the catalog


def test_a_kept_negative_reply_carries_the_current_soa_serial(handler):
    for _ in range(3):
        before = ask(handler, "nope.service.consul", use_edns=False).authority[0][0].serial
    compiled, _ = kept(handler, "nope.service.consul")
    handler.store.publish("other", SourceState(services={("dc1", "x"): (Instance("x", "x", "dc1", "10.1.1.1"),)}))
    after = ask(handler, "nope.service.consul", use_edns=False).authority[0][0].serial
    assert after == before + 1 == handler.store.snapshot.version
    assert kept(handler, "nope.service.consul")[0] is compiled              # not planned again


def test_flags_and_edns_versions(handler):
    q = dns.message.make_query("legacy-billing.service.consul", "A")
    q.flags |= dns.flags.CD
    for _ in range(2):
        reply = ask_wire(handler, q.to_wire())
        assert reply.flags & dns.flags.CD and reply.flags & dns.flags.RD and len(reply.answer[0]) == 2
    version1 = dns.message.make_query("legacy-billing.service.consul", "A", use_edns=1)
    for _ in range(2):
        assert ask_wire(handler, version1.to_wire()).rcode() == 16   # BADVERS


def ask_wire(handler, wire, *, tcp=False):
    return dns.message.from_wire(handler.handle(wire, CLIENT, tcp=tcp))


def test_node_address_change_reaches_instances_that_use_it(handler):
    assert ask(handler, "oracle-db.service.consul").answer[0][0].to_text() == "192.168.30.10"
    zones = handler.store.state("zones")
    node = zones.nodes[("dc1", "db-node-1")]
    handler.store.publish("zones", replace(zones, nodes={**zones.nodes, ("dc1", "db-node-1"): replace(
        node, address="192.168.30.99")}))
    # the oracle-db instance itself is unchanged (it has no address of its own), its answer is not
    assert ask(handler, "oracle-db.service.consul").answer[0][0].to_text() == "192.168.30.99"


def test_a_catalog_change_is_served_at_once_from_kept_replies(handler):
    wire = dns.message.make_query("legacy-billing.service.consul", "A", use_edns=False).to_wire()
    before = {rr.to_text() for rr in ask_wire(handler, wire).answer[0]}
    assert kept(handler, "legacy-billing.service.consul")[1] is not None
    state = handler.store.state("zones")
    key = next(k for k in state.services if k[1] == "legacy-billing")
    insts = state.services[key]
    handler.store.publish("zones", replace(state, services={**state.services, key: (
        replace(insts[0], health=Health.CRITICAL),) + insts[1:]}))
    after = {rr.to_text() for rr in ask_wire(handler, wire).answer[0]}
    assert len(after) == len(before) - 1 and after < before


def test_case_is_echoed_as_asked(handler):
    for name in ("legacy-billing.service.consul", "LEGACY-billing.Service.consul") * 2:
        reply = ask(handler, name, use_edns=False)
        assert reply.question[0].name.to_text() == name + "."


def test_kept_replies_stay_within_the_byte_budget(store):
    handler = DnsHandler(store, OPTS, reply_budget=4000)
    extra = {("dc1", f"s{i}"): tuple(Instance(f"s{i}-{j}", f"s{i}", "dc1", f"10.7.{i}.{j}", 80) for j in range(3))
             for i in range(40)}
    store.publish("budget", SourceState(services=extra))
    wires = [dns.message.make_query(f"s{i}.service.consul", "A", use_edns=False).to_wire() for i in range(40)]
    table = handler.client_class(CLIENT[0]).tables[False]
    for wire in wires:
        for _ in range(3):
            assert len(ask_wire(handler, wire).answer[0]) == 3
        assert wire[2:] in table
        assert 0 < table.size <= 4000 and table.size == sum(e.size for e in table.values())
    assert 0 < sum(w[2:] in table for w in wires) < 40


def test_forwarded_replies_count_down_second_by_second(store, upstreams):
    """A kept upstream reply shows, at every age, the TTLs of a reply rendered anew, and is let go when
    the forwarder's entry expires; every answer from the cache counts one hit."""
    up = upstreams().add("www.example.org", "A", "192.0.2.8", ttl=4)
    now = [1000.0]

    def handler(**kw):
        forwarder = Forwarder(domains=OPTS.domains, recursors=(("127.0.0.1", up.port),),
                              cache=ReplyCache(max_entries=100, clock=lambda: now[0]))
        return DnsHandler(store, OPTS, forwarder=forwarder, recursion=RecursionPolicy(("127.0.0.0/8",)), **kw)

    kept_, anew = handler(), handler(reply_budget=0)
    wire = dns.message.make_query("Www.Example.org", "A", use_edns=0).to_wire()
    for h in (kept_, anew):
        asyncio.run(h.handle(wire, CLIENT, tcp=False))   # fetched once each
    seen = []
    for step in range(12):
        now[0] = 1000.0 + step * 0.37
        if now[0] >= 1004.0:
            break
        got = kept_.handle(wire, CLIENT, tcp=False)
        assert got == anew.handle(wire, CLIENT, tcp=False)
        seen.append(dns.message.from_wire(got).answer[0].ttl)
    assert seen == [4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]
    assert kept_.forwarder.stats.cache["hit"] == len(seen) and up.count() == 2
    now[0] = 1004.0   # expired: asked upstream again
    assert dns.message.from_wire(asyncio.run(kept_.handle(wire, CLIENT, tcp=False))).answer[0].ttl == 4
    assert up.count() == 3


def test_client_classes_follow_the_catalog(store):
    """With a collaborator that knows who is at an address (catalog.client_class), a client's class (and so
    the replies kept for it) changes when the catalog does; classes are shared by clients alike."""
    from meshdns.catalog.client_class import Classifier as Identities
    from meshdns.dns.clients import Classifier, ClientClass

    handler = DnsHandler(store, OPTS, classifier=Classifier(RecursionPolicy(()), identify=Identities(localities=())))
    for client in (("10.1.2.3", 53), ("10.1.2.4", 53)):
        assert ask(handler, "legacy-billing.service.consul", client=client).answer
    assert handler.client_class("10.1.2.3") is handler.client_class("10.1.2.4")
    assert handler.client_class("10.1.2.3").cls == ClientClass()
    store.publish("web", SourceState(services={("dc1", "batch"): (Instance("b", "batch", "dc1", "10.1.2.3", 80),)}))
    assert ask(handler, "legacy-billing.service.consul", client=("10.1.2.3", 53)).answer
    assert handler.client_class("10.1.2.3").cls == ClientClass(services=frozenset({"batch"}))
    assert handler.client_class("10.1.2.4").cls == ClientClass()


def test_an_oversized_forwarded_reply_counts_one_hit_per_answer(store, upstreams):
    up = upstreams().add("big.example.org", "A", *[f"10.2.0.{i}" for i in range(1, 81)])
    forwarder = Forwarder(domains=OPTS.domains, recursors=(("127.0.0.1", up.port),), cache=ReplyCache(max_entries=10))
    handler = DnsHandler(store, OPTS, forwarder=forwarder, recursion=RecursionPolicy(("127.0.0.0/8",)))
    assert len(ask(handler, "big.example.org", tcp=True).answer[0]) == 80       # fetched (over TCP), cached
    for n in range(1, 4):
        reply = ask(handler, "big.example.org", use_edns=False)
        assert reply.flags & dns.flags.TC and not reply.answer                  # too big for 512 bytes
        assert forwarder.stats.cache["hit"] == n and up.count() == 1
    assert len(ask(handler, "big.example.org", tcp=True).answer[0]) == 80
    assert forwarder.stats.cache == {"miss": 1, "hit": 4}
