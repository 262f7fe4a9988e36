"""Resolver table tests: (question, catalog) -> answer, no sockets, no clock, seeded RNG.

Records are turned into text with dnspython, not with meshdns code, so the
expected values are independent of our encoder.
"""
import random

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from meshdns.catalog.model import Health, Instance, Node, SourceState, Split, SplitTarget, Weights
from meshdns.catalog.store import Store
from meshdns.dns.resolver import Soa
from meshdns.dns.resolver import NOERROR, NXDOMAIN, ResolverOptions, plan, resolve

DC = "dc1"


def inst(service, address="", *, id=None, node="", port=80, tags=(), health=Health.PASSING, dc=DC,
         weights=Weights()):
    return Instance(id=id or f"{service}-{address or node}", service=service, datacenter=dc, address=address,
                    port=port, node=node, tags=tuple(tags), weights=weights, health=health, source="t")


def catalog(*instances, nodes=(), splits=()):
    store = Store(datacenter=DC)
    services = {}
    for i in instances:
        services.setdefault((i.datacenter, i.service.lower()), []).append(i)
    store.publish("t", SourceState(services={k: tuple(v) for k, v in services.items()},
                                   nodes={(n.datacenter, n.name.lower()): n for n in nodes},
                                   splits={s.name: s for s in splits}))
    return store.snapshot


SNAP = catalog(
    inst("web", "10.0.0.1", tags=["v1"]),
    inst("web", "10.0.0.2", tags=["v2", "Rel.2024"]),
    inst("web", "10.0.0.3", health=Health.WARNING),
    inst("web", "10.0.0.4", health=Health.CRITICAL),
    inst("web", "10.0.0.5", health=Health.MAINTENANCE),
    inst("v6", "fd00::1"),
    inst("db", node="db-1", port=5432),
    inst("ext", "api.example.com", port=443),
    inst("down", "10.0.1.1", health=Health.CRITICAL),
    inst("east-svc", "10.1.0.1", dc="east"),
    nodes=[Node("db-1", "10.0.9.9", DC, meta=(("rack", "r1"), ("rfc1035-Policy", "v=spf1 -all"), (" x=y", "`z"))),
           Node("edge", "fd00::9", DC)],
)
OPTS = ResolverOptions(domains=("consul.", "mesh.internal."), soa=Soa(min_ttl=5))


def texts(records, qtype_filter=None):
    out = []
    for r in records:
        rd = dns.rdata.from_wire(dns.rdataclass.IN, r.rtype, r.rdata, 0, len(r.rdata))
        out.append(f"{r.name or '@'} {dns.rdatatype.to_text(r.rtype)} {rd.to_text()}")
    return sorted(out)


def ask(name, qtype, snap=SNAP, opts=OPTS, seed=1):
    return resolve(name, dns.rdatatype.from_text(qtype), snap, opts, random.Random(seed))


CASES = [
    # (qname, qtype, rcode, sorted answer texts)
    ("web.service.consul.", "A", NOERROR, ["@ A 10.0.0.1", "@ A 10.0.0.2", "@ A 10.0.0.3"]),
    ("v1.web.service.consul.", "A", NOERROR, ["@ A 10.0.0.1"]),
    ("web.service.dc1.consul.", "A", NOERROR, ["@ A 10.0.0.1", "@ A 10.0.0.2", "@ A 10.0.0.3"]),
    ("web.service.mesh.internal.", "A", NOERROR, ["@ A 10.0.0.1", "@ A 10.0.0.2", "@ A 10.0.0.3"]),
    ("_web._v2.service.consul.", "SRV", NOERROR, ["@ SRV 1 1 80 0a000002.addr.dc1.consul."]),
    ("_web._tcp.service.consul.", "SRV", NOERROR,
     ["@ SRV 1 1 80 0a000001.addr.dc1.consul.", "@ SRV 1 1 80 0a000002.addr.dc1.consul.",
      "@ SRV 1 1 80 0a000003.addr.dc1.consul."]),
    ("web.service.consul.", "AAAA", NOERROR, []),           # NODATA: exists, no IPv6
    ("web.service.consul.", "TXT", NOERROR, []),
    ("v6.service.consul.", "AAAA", NOERROR, ["@ AAAA fd00::1"]),
    ("db.service.consul.", "A", NOERROR, ["@ A 10.0.9.9"]),  # node address fallback
    ("db.service.consul.", "SRV", NOERROR, ["@ SRV 1 1 5432 db-1.node.dc1.consul."]),  # no IP of its own
    ("ext.service.consul.", "A", NOERROR, ["@ CNAME api.example.com."]),
    ("ext.service.consul.", "SRV", NOERROR, ["@ SRV 1 1 443 api.example.com."]),
    ("down.service.consul.", "A", NXDOMAIN, []),            # no healthy instance
    ("nope.service.consul.", "A", NXDOMAIN, []),
    ("east-svc.service.consul.", "A", NXDOMAIN, []),        # other datacenter needs its label
    ("east-svc.service.east.consul.", "A", NOERROR, ["@ A 10.1.0.1"]),
    ("web.service.nowhere.consul.", "A", NXDOMAIN, []),
    ("db-1.node.consul.", "A", NOERROR, ["@ A 10.0.9.9"]),
    # node meta as Consul: key=value (RFC 1464 quoting), a rfc1035- key gives the bare value
    ("db-1.node.dc1.consul.", "TXT", NOERROR, ['@ TXT "` x`=y=``z"', '@ TXT "rack=r1"', '@ TXT "v=spf1 -all"']),
    ("edge.node.consul.", "AAAA", NOERROR, ["@ AAAA fd00::9"]),
    ("edge.node.consul.", "A", NOERROR, []),
    ("ghost.node.consul.", "A", NXDOMAIN, []),
    ("0a000001.addr.dc1.consul.", "A", NOERROR, ["@ A 10.0.0.1"]),
    ("fd000000000000000000000000000001.addr.consul.", "AAAA", NOERROR, ["@ AAAA fd00::1"]),
    ("0a000001.addr.consul.", "AAAA", NOERROR, []),
    ("zz.addr.consul.", "A", NXDOMAIN, []),
    ("consul.", "SOA", NOERROR, ["@ SOA ns.consul. hostmaster.consul. 1 3600 600 86400 5"]),
    ("consul.", "NS", NOERROR, ["@ NS ns.consul."]),
    ("mesh.internal.", "NS", NOERROR, ["@ NS ns.mesh.internal."]),
    ("consul.", "A", NOERROR, []),
    ("a.b.c.service.consul.", "A", NXDOMAIN, []),
    ("rel.2024.web.service.consul.", "A", NOERROR, ["@ A 10.0.0.2"]),  # a tag with a dot, as Consul
    ("rel.2024.web.service.dc1.consul.", "SRV", NOERROR, ["@ SRV 1 1 80 0a000002.addr.dc1.consul."]),
    # RFC 2782 names without `.service`, as Consul reads them (SRV only; other types: NODATA)
    ("_web._v2.consul.", "SRV", NOERROR, ["@ SRV 1 1 80 0a000002.addr.dc1.consul."]),
    ("_web._tcp.dc1.consul.", "SRV", NOERROR,
     ["@ SRV 1 1 80 0a000001.addr.dc1.consul.", "@ SRV 1 1 80 0a000002.addr.dc1.consul.",
      "@ SRV 1 1 80 0a000003.addr.dc1.consul."]),
    ("_east-svc._tcp.east.mesh.internal.", "SRV", NOERROR, ["@ SRV 1 1 80 0a010001.addr.east.mesh.internal."]),
    ("_web._tcp.consul.", "A", NOERROR, []),
    ("_nope._tcp.consul.", "SRV", NXDOMAIN, []),
    ("_nope._tcp.consul.", "A", NXDOMAIN, []),
    ("_web._tcp.nowhere.consul.", "SRV", NXDOMAIN, []),
    ("_web.consul.", "SRV", NXDOMAIN, []),
    ("x._web._tcp.consul.", "SRV", NXDOMAIN, []),
    ("random.junk.consul.", "HINFO", NXDOMAIN, []),         # CoreDNS loop-detect probe
    ("1.0.0.10.in-addr.arpa.", "PTR", NOERROR, ["@ PTR web.service.dc1.consul."]),
    ("9.9.0.10.in-addr.arpa.", "PTR", NOERROR, ["@ PTR db-1.node.dc1.consul."]),  # a node's IP: the node only
]


@pytest.mark.parametrize("qname,qtype,rcode,answer", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_table(qname, qtype, rcode, answer):
    ans = ask(qname, qtype)
    assert ans.rcode == rcode
    assert texts(ans.answer) == answer
    if not answer and rcode in (NOERROR, NXDOMAIN) and not qname.endswith("arpa."):
        # negative answers carry the SOA of the domain asked, TTL = soa.min_ttl (RFC 2308)
        assert [(r.rtype, r.ttl) for r in ans.authority] == [(6, 5)]
        assert ans.authority[0].name in ("consul.", "mesh.internal.")


def test_srv_additional_has_target_addresses():
    ans = ask("web.service.consul.", "SRV")
    assert texts(ans.additional) == ["0a000001.addr.dc1.consul. A 10.0.0.1", "0a000002.addr.dc1.consul. A 10.0.0.2",
                                     "0a000003.addr.dc1.consul. A 10.0.0.3"]


def test_srv_target_is_the_node_for_an_instance_without_an_ip_of_its_own():
    snap = catalog(inst("db", node="db-1", port=5432), inst("db", "10.0.9.9", id="own", node="db-1", port=5433),
                   inst("db", node="edge", port=5434), nodes=[Node("db-1", "10.0.9.9", DC), Node("edge", "fd00::9", DC)])
    ans = ask("db.service.consul.", "SRV", snap)
    assert texts(ans.answer) == ["@ SRV 1 1 5432 db-1.node.dc1.consul.", "@ SRV 1 1 5433 0a000909.addr.dc1.consul.",
                                 "@ SRV 1 1 5434 edge.node.dc1.consul."]
    assert texts(ans.additional) == ["0a000909.addr.dc1.consul. A 10.0.9.9", "db-1.node.dc1.consul. A 10.0.9.9",
                                     "edge.node.dc1.consul. AAAA fd00::9"]


def test_reverse_names_with_non_ascii_digits_are_not_ours():
    # bytes such as 0xb2 decode to "²", which str.isdigit() accepts; they must not reach int()
    assert plan("1.2.3.\u00b2.in-addr.arpa.", 12, SNAP, OPTS).forward


def test_unknown_names_are_forwarded_not_answered():
    assert plan("example.com.", 1, SNAP, OPTS).forward
    assert plan("5.5.5.5.in-addr.arpa.", 12, SNAP, OPTS).forward


def test_only_passing_hides_warning():
    opts = ResolverOptions(only_passing=True)
    assert texts(ask("web.service.consul.", "A", opts=opts).answer) == ["@ A 10.0.0.1", "@ A 10.0.0.2"]


def test_a_record_limit_caps_answers_but_not_which():
    opts = ResolverOptions(a_record_limit=1)
    seen = {texts(ask("web.service.consul.", "A", opts=opts, seed=s).answer)[0] for s in range(60)}
    assert seen == {"@ A 10.0.0.1", "@ A 10.0.0.2", "@ A 10.0.0.3"}


@pytest.mark.parametrize("name,ttl", [("web", 30), ("webapp", 10), ("db", 99), ("other", 1)])
def test_service_ttl_exact_then_longest_prefix_then_star(name, ttl):
    opts = ResolverOptions(service_ttl=(("*", 1), ("w*", 5), ("web*", 10), ("web", 30), ("db", 99)))
    assert opts.ttl_for_service(name) == ttl


def test_ttls_applied():
    snap = catalog(inst("web", "10.0.0.1"), nodes=[Node("n1", "10.0.0.9", DC)])
    opts = ResolverOptions(node_ttl=7, service_ttl=(("web", 30.0),))
    assert [r.ttl for r in ask("web.service.consul.", "A", snap, opts).answer] == [30]
    assert [r.ttl for r in ask("n1.node.consul.", "A", snap, opts).answer] == [7]


def test_weighted_shuffle_puts_heavier_first_in_proportion():
    snap = catalog(inst("w", "10.0.0.1", weights=Weights(3, 1)), inst("w", "10.0.0.2", weights=Weights(1, 1)))
    rng = random.Random(7)
    p = plan("w.service.consul.", 1, snap, OPTS)
    from meshdns.dns.resolver import realize
    first = [realize(p, rng).answer[0].rdata for _ in range(4000)]
    share = first.count(bytes([10, 0, 0, 1])) / len(first)
    assert 0.72 < share < 0.78


def test_warning_weight_used_in_srv():
    snap = catalog(inst("w", "10.0.0.1", weights=Weights(10, 2), health=Health.WARNING))
    assert texts(ask("w.service.consul.", "SRV", snap).answer) == ["@ SRV 1 2 80 0a000001.addr.dc1.consul."]


def test_split_a_answers_one_side_srv_all_with_shares():
    snap = catalog(inst("legacy", "10.0.0.1"), inst("legacy", "10.0.0.2"), inst("billing", "10.0.1.1", tags=["v2"]),
                   splits=[Split("billing", (SplitTarget("legacy", 75), SplitTarget("billing", 25, "v2")))])
    sides = [texts(ask("billing.service.consul.", "A", snap, seed=s).answer) for s in range(400)]
    legacy = [s for s in sides if s == ["@ A 10.0.0.1", "@ A 10.0.0.2"]]
    new = [s for s in sides if s == ["@ A 10.0.1.1"]]
    assert len(legacy) + len(new) == 400 and 0.68 < len(legacy) / 400 < 0.82
    srv = texts(ask("billing.service.consul.", "SRV", snap).answer)
    # 75% over two instances (37.5% each) vs 25% on one: weights 65535 * 37.5/37.5 and 65535 * 25/37.5
    assert srv == ["@ SRV 1 43690 80 0a000101.addr.dc1.consul.", "@ SRV 1 65535 80 0a000001.addr.dc1.consul.",
                   "@ SRV 1 65535 80 0a000002.addr.dc1.consul."]


def test_split_side_without_healthy_instances_drops_out():
    snap = catalog(inst("legacy", "10.0.0.1", health=Health.CRITICAL), inst("new", "10.0.1.1"),
                   splits=[Split("billing", (SplitTarget("legacy", 99), SplitTarget("new", 1)))])
    assert {tuple(texts(ask("billing.service.consul.", "A", snap, seed=s).answer)) for s in range(50)} == \
        {("@ A 10.0.1.1",)}


def test_split_all_down_nxdomain_or_fail_open():
    insts = (inst("a", "10.0.0.1", health=Health.CRITICAL), inst("b", "10.0.1.1", health=Health.CRITICAL))
    targets = (SplitTarget("a", 50), SplitTarget("b", 50))
    closed = catalog(*insts, splits=[Split("s", targets)])
    assert ask("s.service.consul.", "A", closed).rcode == NXDOMAIN
    open_ = catalog(*insts, splits=[Split("s", targets, on_all_unhealthy="all")])
    assert len(ask("s.service.consul.", "A", open_).answer) == 1
    assert len(ask("s.service.consul.", "SRV", open_).answer) == 2


def test_split_ttl_overrides_service_ttl():
    snap = catalog(inst("a", "10.0.0.1"), splits=[Split("s", (SplitTarget("a", 100),), ttl=12)])
    assert [r.ttl for r in ask("s.service.consul.", "A", snap).answer] == [12]


def test_soa_serial_is_catalog_version():
    snap = catalog(inst("a", "10.0.0.1"))
    serial = ask("consul.", "SOA", snap).answer[0].rdata[-20:-16]
    assert int.from_bytes(serial, "big") == snap.version


def test_split_fail_open_serves_each_targets_tag_never_maintenance():
    snap = catalog(inst("a", "10.0.0.1", health=Health.CRITICAL),
                   inst("a", "10.0.0.2", health=Health.MAINTENANCE),
                   inst("b", "10.0.1.1", tags=["v2"], health=Health.CRITICAL),
                   inst("b", "10.0.1.2", tags=["v1"], health=Health.CRITICAL),   # b, but not the target's tag
                   inst("b", "10.0.1.3", tags=["v2"], health=Health.MAINTENANCE),
                   splits=[Split("s", (SplitTarget("a", 50), SplitTarget("b", 50, "v2")), on_all_unhealthy="all")])
    sides = {tuple(texts(ask("s.service.consul.", "A", snap, seed=n).answer)) for n in range(40)}
    assert sides == {("@ A 10.0.0.1",), ("@ A 10.0.1.1",)}
    assert texts(ask("s.service.consul.", "SRV", snap).answer) == [
        "@ SRV 1 65535 80 0a000001.addr.dc1.consul.", "@ SRV 1 65535 80 0a000101.addr.dc1.consul."]


HOSTS = catalog(
    inst("mixed", "10.0.2.1", port=81), inst("mixed", "api.example.com", port=443),
    inst("ext2", "a.example.com", weights=Weights(3, 1)), inst("ext2", "b.example.com", weights=Weights(1, 1)),
    inst("alias-node", "db-1.node.consul", port=5432),          # a hostname we serve ourselves
    inst("alias-svc", "Web.Service.Consul.", port=80),
    inst("alias-chain", "alias-node.service.consul", port=1),
    inst("alias-gone", "ghost.node.consul", port=1),
    inst("loop-a", "loop-b.service.consul"), inst("loop-b", "loop-a.service.consul"),
    inst("web", "10.0.0.1"), inst("web", "10.0.0.2"),
    inst("v6", "fd00::1"),
    nodes=[Node("db-1", "10.0.9.9", DC), Node("edge", "fd00::9", DC)],
)


@pytest.mark.parametrize("qname,qtype,answer", [
    # a service with IP instances answers with those only, for every type (never a CNAME beside them)
    ("mixed.service.consul.", "A", ["@ A 10.0.2.1"]),
    ("mixed.service.consul.", "AAAA", []),
    ("mixed.service.consul.", "CNAME", []),
    ("mixed.service.consul.", "SRV", ["@ SRV 1 1 443 api.example.com.", "@ SRV 1 1 81 0a000201.addr.dc1.consul."]),
    # a hostname we serve: CNAME plus the target's records, resolved here
    ("alias-node.service.consul.", "A", ["@ CNAME db-1.node.consul.", "db-1.node.consul. A 10.0.9.9"]),
    ("alias-node.service.consul.", "AAAA", ["@ CNAME db-1.node.consul."]),
    ("alias-node.service.consul.", "CNAME", ["@ CNAME db-1.node.consul."]),
    ("alias-svc.service.consul.", "A", ["@ CNAME Web.Service.Consul.", "web.service.consul. A 10.0.0.1",
                                        "web.service.consul. A 10.0.0.2"]),
    ("alias-chain.service.consul.", "A", ["@ CNAME alias-node.service.consul.",
                                          "alias-node.service.consul. CNAME db-1.node.consul.",
                                          "db-1.node.consul. A 10.0.9.9"]),
    ("alias-gone.service.consul.", "A", ["@ CNAME ghost.node.consul."]),
    # a loop is followed once round, so the client sees it and stops
    ("loop-a.service.consul.", "A", ["@ CNAME loop-b.service.consul.",
                                     "loop-b.service.consul. CNAME loop-a.service.consul."]),
])
def test_hostname_instances(qname, qtype, answer):
    ans = ask(qname, qtype, HOSTS)
    assert (ans.rcode, texts(ans.answer)) == (NOERROR, answer)


def test_a_service_of_hostnames_answers_one_cname_chosen_by_weight():
    firsts = [texts(ask("ext2.service.consul.", "A", HOSTS, seed=n).answer) for n in range(2000)]
    assert all(len(f) == 1 for f in firsts)
    share = sum(f == ["@ CNAME a.example.com."] for f in firsts) / len(firsts)
    assert 0.72 < share < 0.78 and {tuple(f) for f in firsts} == {("@ CNAME a.example.com.",),
                                                                   ("@ CNAME b.example.com.",)}


def test_the_target_of_a_cname_we_serve_is_shuffled_too():
    orders = {tuple(r.rdata for r in ask("alias-svc.service.consul.", "A", HOSTS, seed=n).answer[1:])
              for n in range(40)}
    assert orders == {(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])), (bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))}


def test_srv_for_a_hostname_we_serve_carries_its_addresses():
    ans = ask("alias-chain.service.consul.", "SRV", HOSTS)
    assert texts(ans.answer) == ["@ SRV 1 1 1 alias-node.service.consul."]
    assert texts(ans.additional) == ["alias-node.service.consul. CNAME db-1.node.consul.",
                                     "db-1.node.consul. A 10.0.9.9"]
    svc = ask("alias-svc.service.consul.", "SRV", HOSTS)
    assert texts(svc.additional) == ["web.service.consul. A 10.0.0.1", "web.service.consul. A 10.0.0.2"]
    assert ask("mixed.service.consul.", "SRV", HOSTS).additional[-1:] != ()   # the IP target keeps its A
    assert texts(ask("ext2.service.consul.", "SRV", HOSTS).additional) == []  # not ours: the client resolves it


def test_a_cname_into_our_names_is_invalidated_with_its_target():
    store = Store(datacenter=DC)
    store.publish("t", SourceState(services={(DC, "alias"): (inst("alias", "web.service.consul"),),
                                             (DC, "web"): (inst("web", "10.0.0.1"),)}))
    p = plan("alias.service.consul.", 1, store.snapshot, OPTS)
    from meshdns.catalog.view import still_valid
    assert still_valid(p.deps, store.snapshot)
    store.publish("t", SourceState(services={(DC, "alias"): (inst("alias", "web.service.consul"),),
                                             (DC, "web"): (inst("web", "10.0.0.7"),)}))
    assert not still_valid(p.deps, store.snapshot)
