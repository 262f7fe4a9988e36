"""The hot path and the general path give byte-identical answers, and cached answers follow the catalog."""
import random
from dataclasses import replace

import dns.flags
import dns.message
import pytest

from harness import ZONES
from meshdns.catalog.model import Health, Instance, SourceState, Split, SplitTarget, Weights
from meshdns.catalog.store import Store
from meshdns.config import SoaConfig
from meshdns.dns.handler import DnsHandler
from meshdns.dns.resolver import ResolverOptions
from meshdns.sources.zonefiles import parse_master
from meshdns.sources.zones import ZonesSource

CLIENT = ("127.0.0.1", 5353)


@pytest.fixture
def handler():
    store = Store(datacenter="dc1")
    ZonesSource(ZONES, store, datacenter="dc1").reload()
    extra = {("dc1", "web"): tuple(Instance(f"web-{i}", "web", "dc1", f"10.9.0.{i}", 80, weights=replace(
        Instance("x", "x", "x").weights, passing=i)) for i in range(1, 6))}
    extra[("dc1", "big")] = tuple(Instance(f"big-{i}", "big", "dc1", f"10.8.{i // 200}.{i % 200}", 80)
                                  for i in range(120))
    # hostname instances: into our own names, a weighted choice of two CNAMEs, beside an IP instance
    hosted = {"alias": [("oracle-db.service.consul", 1)], "wiki": [("wiki.corp.internal", 1)],
              "hosts": [("a.example.com", 3), ("b.example.com", 1)], "mixed": [("10.7.0.1", 1), ("api.example.com", 1)]}
    for name, members in hosted.items():
        extra[("dc1", name)] = tuple(Instance(f"{name}-{a}", name, "dc1", a, 443, weights=Weights(w, 1))
                                     for a, w in members)
    store.publish("test", SourceState(services=extra, splits={"billing": Split(
        "billing", (SplitTarget("legacy-billing", 90), SplitTarget("web", 10)))}))
    opts = ResolverOptions(domains=("consul.", "mesh.internal."), soa=SoaConfig(min_ttl=3), a_record_limit=0)
    return DnsHandler(store, opts)


NAMES = [
    ("legacy-billing.service.consul", "A"), ("legacy-billing.service.consul", "SRV"),
    ("Legacy-Billing.Service.Consul", "SRV"), ("v1.legacy-billing.service.consul", "A"),
    ("_legacy-billing._tcp.service.dc1.consul", "SRV"), ("web.service.consul", "A"), ("web.service.consul", "SRV"),
    ("web.service.mesh.internal", "SRV"), ("billing.service.consul", "A"), ("billing.service.consul", "SRV"),
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


@pytest.mark.parametrize("name,qtype", NAMES, ids=[f"{n}/{t}" for n, t in NAMES])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_fast_and_general_paths_identical(handler, name, qtype, tcp):
    for q in shapes(name, qtype):
        wire = q.to_wire()
        for seed in range(4):
            handler.rng = random.Random(seed)
            handler.fast.cache.clear()
            first = handler.fast.answer(wire, handler.store.snapshot, handler.rng, tcp=tcp, ra=False)
            handler.rng = random.Random(seed)
            cached = handler.fast.answer(wire, handler.store.snapshot, handler.rng, tcp=tcp, ra=False)
            handler.rng = random.Random(seed)
            general = handler.handle_general(wire, CLIENT, tcp=tcp)
            assert first is not None, "the fast path should take this common query shape"
            assert first[0] == general == cached[0]
            assert cached[1] is first[1]   # the second answer came from the compiled one, not compiled again
            msg = dns.message.from_wire(general)  # and it is a well-formed DNS message
            assert msg.id == q.id and msg.question[0].name == q.question[0].name


def test_with_recursion_a_lone_cname_goes_to_the_general_path(handler):
    """The general path resolves a lone CNAME's target for clients that may recurse; the fast path must not
    answer those on its own."""
    wire = dns.message.make_query("payments-gateway.service.consul", "A").to_wire()
    assert handler.fast.answer(wire, handler.store.snapshot, handler.rng, tcp=False, ra=True) is None
    assert handler.fast.answer(wire, handler.store.snapshot, handler.rng, tcp=False, ra=False) is not None


def test_with_recursion_a_zone_cname_to_elsewhere_goes_to_the_general_path(handler):
    zone = parse_master("ext.test.zone", "$ORIGIN ext.test.\n@ IN SOA ns hm 1 2 3 4 5\nwww IN CNAME www.example.org.\n",
                        default_origin="ext.test.", source="t")
    handler.store.publish("ext", SourceState(zones={zone.origin: zone}))
    wire = dns.message.make_query("www.ext.test", "A").to_wire()
    assert handler.fast.answer(wire, handler.store.snapshot, handler.rng, tcp=False, ra=True) is None
    assert handler.fast.answer(wire, handler.store.snapshot, handler.rng, tcp=False, ra=False) is not None


def test_one_service_change_invalidates_only_its_answers(handler):
    def ask(name):
        return dns.message.from_wire(handler.handle(dns.message.make_query(name, "A").to_wire(), CLIENT, tcp=False))

    assert ask("oracle-db.service.consul").answer[0][0].to_text() == "192.168.30.10"
    assert len(ask("web.service.consul").answer[0]) == 5
    ask("redis.service.consul")
    redis_entry = handler.fast.cache[b"\x05redis\x07service\x06consul\x00\x00\x01"]
    state = handler.store.state("test")
    web = state.services[("dc1", "web")]
    handler.store.publish("test", replace(state, services={**state.services, ("dc1", "web"): (
        replace(web[0], health=Health.CRITICAL),) + web[1:]}))
    assert len(ask("web.service.consul").answer[0]) == 4           # the change is served at once
    ask("redis.service.consul")
    assert handler.fast.cache[b"\x05redis\x07service\x06consul\x00\x00\x01"] is redis_entry  # untouched
    nx = ask("nope.service.consul")
    assert nx.authority[0][0].serial == handler.store.snapshot.version  # SOA serial follows the catalog


def test_unusual_shapes_take_the_general_path(handler):
    q = dns.message.make_query("legacy-billing.service.consul", "A")
    q.flags |= dns.flags.CD
    wire = bytearray(q.to_wire())
    assert handler.fast.answer(bytes(wire), handler.store.snapshot, handler.rng, tcp=False, ra=False) is not None
    two_opts = dns.message.make_query("legacy-billing.service.consul", "A", use_edns=1)  # EDNS version 1
    assert handler.fast.answer(two_opts.to_wire(), handler.store.snapshot, handler.rng, tcp=False, ra=False) is None
    reply = dns.message.from_wire(handler.handle(two_opts.to_wire(), CLIENT, tcp=False))
    assert reply.rcode() == 16  # BADVERS from the general path


def test_node_address_change_reaches_instances_that_use_it(handler):
    def ask(name):
        return dns.message.from_wire(handler.handle(dns.message.make_query(name, "A").to_wire(), CLIENT, tcp=False))

    assert ask("oracle-db.service.consul").answer[0][0].to_text() == "192.168.30.10"
    zones = handler.store.state("zones")
    node = zones.nodes[("dc1", "db-node-1")]
    handler.store.publish("zones", replace(zones, nodes={**zones.nodes, ("dc1", "db-node-1"): replace(
        node, address="192.168.30.99")}))
    # the oracle-db instance itself is unchanged (it has no address of its own), its answer is not
    assert ask("oracle-db.service.consul").answer[0][0].to_text() == "192.168.30.99"
