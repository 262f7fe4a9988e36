"""Answers that depend on who asks, at the resolver: (question, catalog, client class) -> plan (table tests).

Records are read back with dnspython, so the expected values do not come from our encoder.
"""
import random

import dns.rdata
import dns.rdataclass
import pytest

from meshdns.catalog.client_class import ClientClass
from meshdns.catalog.model import (Health, Instance, Intention, IntentionSource, PreparedQuery, SourceState, Split,
                                   SplitTarget)
from meshdns.catalog.store import Store
from meshdns.dns import rdata
from meshdns.dns.resolver import NOERROR, NXDOMAIN, ResolverOptions, Soa, plan, resolve

DC = "dc1"


def inst(service, address, zone="", *, health=Health.PASSING, tags=()):
    return Instance(id=f"{service}-{address}", service=service, datacenter=DC, address=address, port=80,
                    meta=(("zone", zone),) if zone else (), health=health, tags=tuple(tags), source="t")


def catalog(*instances, splits=(), intentions=(), queries=()):
    store = Store(datacenter=DC)
    services = {}
    for i in instances:
        services.setdefault((DC, i.service), []).append(i)
    store.publish("t", SourceState(services={k: tuple(v) for k, v in services.items()},
                                   splits={s.name: s for s in splits}, intentions={e.name: e for e in intentions},
                                   queries={q.id: q for q in queries}))
    return store.snapshot


SNAP = catalog(
    inst("db", "10.0.1.1", "a"), inst("db", "10.0.1.2", "a"), inst("db", "10.0.2.1", "b"),
    inst("db", "10.0.3.1"), inst("db", "10.0.1.3", "a", health=Health.CRITICAL),
    inst("old", "10.1.1.1", "a"), inst("old", "10.1.2.1", "b"),
    inst("new", "10.2.2.1", "b"), inst("new", "10.2.2.2", "b"),
    inst("cache", "10.3.1.1", "a", tags=["v1"]),
    splits=[Split("app", (SplitTarget("old", 50), SplitTarget("new", 50)))],
    intentions=[Intention("db", (IntentionSource("*", "allow"), IntentionSource("web", "deny"))),
                Intention("cache", (IntentionSource("*", "deny"), IntentionSource("api", "allow")))],
    queries=[PreparedQuery("q1", name="primary", service="db")],
)
LOCAL = ResolverOptions(prefer_same_zone=True, soa=Soa(min_ttl=5))
VIEWS = ResolverOptions(enforce_intentions=True, soa=Soa(min_ttl=5))
A, SRV, AAAA, TXT = rdata.A, rdata.SRV, rdata.AAAA, rdata.TXT


def who(zone="", *services):
    return ClientClass(zone, frozenset(services))


def addresses(p, group=None):
    groups = p.groups if group is None else (p.groups[group],)
    return sorted(dns.rdata.from_wire(dns.rdataclass.IN, r.rtype, r.rdata, 0, len(r.rdata)).to_text()
                  for g in groups for u in g.units for r in u.answer)


def srv(p):
    """(priority, target) per SRV record."""
    out = []
    for u in p.groups[0].units:
        rd = dns.rdata.from_wire(dns.rdataclass.IN, SRV, u.answer[0].rdata, 0, len(u.answer[0].rdata))
        out.append((rd.priority, rd.target.to_text()))
    return sorted(out)


# -- same zone -----------------------------------------------------------------------

@pytest.mark.parametrize("client,opts,expected,local", [
    (who("a"), LOCAL, ["10.0.1.1", "10.0.1.2"], True),                           # only zone a's healthy ones
    (who("b"), LOCAL, ["10.0.2.1"], True),
    (who("c"), LOCAL, ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.3.1"], False),  # no instance there: all
    (who(""), LOCAL, ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.3.1"], None),    # no zone: all, not counted
    (who("b"), ResolverOptions(prefer_same_zone=True, same_zone_min=2),          # too few in b: spill over
     ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.3.1"], False),
    (who("a"), ResolverOptions(prefer_same_zone=True, same_zone_min=2), ["10.0.1.1", "10.0.1.2"], True),
    (who("a"), ResolverOptions(), ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.3.1"], None),  # feature off
])
def test_address_answers_keep_to_the_clients_zone(client, opts, expected, local):
    p = plan("db.service.consul.", A, SNAP, opts, client=client)
    assert addresses(p) == expected
    assert [g.same_zone for g in p.groups] == [local]


def test_srv_answers_carry_every_instance_with_same_zone_ones_first():
    p = plan("db.service.consul.", SRV, SNAP, LOCAL, client=who("a"))
    assert [prio for prio, _ in srv(p)] == [1, 1, 2, 2]
    assert sorted(t for prio, t in srv(p) if prio == 1) == ["0a000101.addr.dc1.consul.", "0a000102.addr.dc1.consul."]
    assert p.groups[0].same_zone is True
    # RFC 2782 form, and a client in a zone without instances: all at priority 1
    p = plan("_db._tcp.service.consul.", SRV, SNAP, LOCAL, client=who("c"))
    assert [prio for prio, _ in srv(p)] == [1, 1, 1, 1] and p.groups[0].same_zone is False
    # feature off: every priority is 1, as before
    assert [prio for prio, _ in srv(plan("db.service.consul.", SRV, SNAP, VIEWS, client=who("a")))] == [1] * 4


def test_within_a_split_the_side_is_chosen_first_then_the_zone():
    p = plan("app.service.consul.", A, SNAP, LOCAL, client=who("a"))
    assert [g.label for g in p.groups] == ["old", "new"]
    assert addresses(p, 0) == ["10.1.1.1"]                  # old: zone a has one
    assert addresses(p, 1) == ["10.2.2.1", "10.2.2.2"]      # new: none in zone a, so all of it (not old's)
    assert [g.same_zone for g in p.groups] == [True, False]
    # a seeded draw lands on each side about half the time, whatever the zone
    rng = random.Random(7)
    firsts = [resolve("app.service.consul.", A, SNAP, LOCAL, rng, client=who("a")).target for _ in range(400)]
    assert 150 < firsts.count("old") < 250
    p = plan("app.service.consul.", SRV, SNAP, LOCAL, client=who("b"))
    assert [prio for prio, _ in srv(p)] == [1, 1, 1, 2]      # old's zone-b one and new's two first


def test_prepared_queries_and_tags_keep_to_the_zone_too():
    assert addresses(plan("primary.query.consul.", A, SNAP, LOCAL, client=who("b"))) == ["10.0.2.1"]
    assert addresses(plan("v1.cache.service.consul.", A, SNAP, LOCAL, client=who("b"))) == ["10.3.1.1"]


# -- intentions ----------------------------------------------------------------------

MISSING = plan("nothing.service.consul.", A, SNAP, VIEWS)


@pytest.mark.parametrize("qname,qtype,client,denied", [
    ("db.service.consul.", A, who("", "web"), ("web", "db")),            # web denied db
    ("db.service.consul.", SRV, who("", "web"), ("web", "db")),
    ("db.service.consul.", TXT, who("", "web"), ("web", "db")),          # every qtype
    ("v1.db.service.consul.", A, who("", "web"), ("web", "db")),         # tags
    ("_db._tcp.service.consul.", SRV, who("", "web"), ("web", "db")),    # RFC 2782
    ("_db._tcp.service.consul.", A, who("", "web"), ("web", "db")),
    ("db.service.dc1.consul.", A, who("", "web"), ("web", "db")),
    ("primary.query.consul.", A, who("", "web"), ("web", "db")),         # .query: the query's service
    ("cache.service.consul.", A, who(""), ("*", "cache")),               # "*" deny: an address without identity
    ("cache.service.consul.", A, who("", "web"), ("web", "cache")),      # ... and any unnamed identity
])
def test_a_denied_name_is_planned_exactly_as_a_missing_one(qname, qtype, client, denied):
    p = plan(qname, qtype, SNAP, VIEWS, client=client)
    assert (p.rcode, p.groups, p.authority, p.soa_domain, p.authoritative, p.limit) == \
        (MISSING.rcode, MISSING.groups, MISSING.authority, MISSING.soa_domain, MISSING.authoritative, MISSING.limit)
    assert p.denied == denied


@pytest.mark.parametrize("qname,client,opts", [
    ("db.service.consul.", who("", "api"), VIEWS),                        # "*" allows
    ("db.service.consul.", who(""), VIEWS),
    ("db.service.consul.", who("", "web", "batch"), VIEWS),               # any identity allowed: answered
    ("cache.service.consul.", who("", "api"), VIEWS),                     # exact allow over "*" deny
    ("db.service.consul.", who("", "web"), LOCAL),                        # not enforced
    ("old.service.consul.", who("", "web"), ResolverOptions(enforce_intentions=True, intentions_default="allow")),
])
def test_allowed_names_are_answered(qname, client, opts):
    p = plan(qname, A, SNAP, opts, client=client)
    assert p.rcode == NOERROR and p.groups and p.denied == ()


def test_the_default_decides_without_an_entry_and_a_split_is_its_own_destination():
    strict = ResolverOptions(enforce_intentions=True, intentions_default="deny")
    assert plan("old.service.consul.", A, SNAP, strict, client=who("", "web")).denied == ("web", "old")
    # a split is reached by its name: no entry for "app", so the default, whatever old's and new's entries say
    assert plan("app.service.consul.", A, SNAP, strict, client=who("", "web")).denied == ("web", "app")
    assert plan("app.service.consul.", A, SNAP, VIEWS, client=who("", "web")).rcode == NOERROR
    # a source an entry names wins over the default: db's "*" allows
    assert plan("db.service.consul.", A, SNAP, strict, client=who("", "api")).rcode == NOERROR
    # names that are not services are not views
    assert plan("db.service.consul.", A, SNAP, strict, client=who("", "web")).denied == ("web", "db")
    assert plan("nothing.service.consul.", A, SNAP, VIEWS, client=who("", "web")).denied == ()
    assert plan("consul.", rdata.SOA, SNAP, strict, client=who("", "web")).rcode == NOERROR


def test_a_denial_depends_on_the_intentions_entry_only():
    """The denied plan reads no instance, so it stays valid while db's instances change."""
    p = plan("db.service.consul.", A, SNAP, VIEWS, client=who("", "web"))
    read = {attr for attr, _, _ in p.deps}
    assert "intentions" in read and not read & {"services", "splits", "ip_services"}
