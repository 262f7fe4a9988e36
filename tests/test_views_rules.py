"""The rules behind answers that depend on who asks: zones, client classes, intentions (table tests)."""
import pytest

from meshdns.catalog.client_class import NOBODY, ClientClass, Classifier, classify, parse_localities
import itertools

from meshdns.catalog.intentions import (Decision, decisive_identities, intention_allows, intention_decision,
                                        named_sources)
from meshdns.catalog.locality import ZoneChoice, instance_zone, same_zone
from meshdns.catalog.model import Health, Instance, Intention, IntentionSource, Node, SourceState
from meshdns.catalog.store import Store


def inst(iid, service="web", address="", *, node="", zone=None, dc="dc1", health=Health.PASSING):
    meta = (("version", "2"),) + ((("zone", zone),) if zone is not None else ())
    return Instance(id=iid, service=service, datacenter=dc, address=address, port=80, node=node,
                    meta=tuple(sorted(meta)), health=health)


def node(name, address, *, zone=None, dc="dc1"):
    return Node(name=name, address=address, datacenter=dc, meta=(("zone", zone),) if zone is not None else ())


def snapshot(*instances, nodes=(), datacenter="dc1"):
    store = Store(datacenter=datacenter)
    services = {}
    for i in instances:
        services.setdefault((i.datacenter, i.service.lower()), []).append(i)
    store.publish("test", SourceState(services={k: tuple(v) for k, v in services.items()},
                                      nodes={(n.datacenter, n.name.lower()): n for n in nodes}))
    return store


# -- an instance's zone ----------------------------------------------------------------

NODES = (node("vm-a", "10.0.0.1", zone="a"), node("vm-plain", "10.0.0.2"), node("vm-b", "10.0.0.3", zone="b", dc="dc2"))


@pytest.mark.parametrize("instance,zone", [
    (inst("own", address="10.1.0.1", zone="c"), "c"),                      # its own meta zone
    (inst("own-on-node", address="10.1.0.1", node="vm-a", zone="c"), "c"),  # ... wins over its node's
    (inst("node", address="10.1.0.1", node="vm-a"), "a"),                  # else its node's
    (inst("node-case", node="VM-A"), "a"),                                  # node names compare in lower case
    (inst("empty-own", node="vm-a", zone=""), "a"),                         # an empty meta zone is no zone
    (inst("plain-node", node="vm-plain"), ""),
    (inst("unknown-node", node="ghost"), ""),
    (inst("no-node", address="10.1.0.1"), ""),
    (inst("other-dc", node="vm-b", dc="dc2"), "b"),                         # the node in the instance's dc
    (inst("wrong-dc", node="vm-b"), ""),
])
def test_instance_zone(instance, zone):
    assert instance_zone(snapshot(nodes=NODES).snapshot, instance) == zone


# -- same-zone answers -------------------------------------------------------------------

A1, A2 = inst("a1", address="10.1.0.1", zone="a"), inst("a2", address="10.1.0.2", node="vm-a")
B1, B2 = inst("b1", address="10.2.0.1", zone="b"), inst("b2", address="10.2.0.2", zone="b")
C1 = inst("c1", address="10.3.0.1")
MIXED = (B1, A1, C1, A2, B2)


@pytest.mark.parametrize("instances,client_zone,minimum,addresses,priorities,same", [
    (MIXED, "a", 1, (A1, A2), (2, 1, 2, 1, 2), True),        # order kept; node zone counts
    (MIXED, "a", 2, (A1, A2), (2, 1, 2, 1, 2), True),        # exactly the minimum
    (MIXED, "a", 3, MIXED, (1, 1, 1, 1, 1), False),          # too few: spill over, no SRV preference
    (MIXED, "b", 1, (B1, B2), (1, 2, 2, 2, 1), True),
    (MIXED, "z", 1, MIXED, (1, 1, 1, 1, 1), False),          # a zone with no instance: cross-zone
    (MIXED, "", 1, MIXED, (1, 1, 1, 1, 1), None),            # a client without a zone: not counted
    ((A1, A2), "a", 1, (A1, A2), (1, 1), True),              # everything in the zone
    ((), "a", 1, (), (), False),
    ((C1,), "", 1, (C1,), (1,), None),
])
def test_same_zone(instances, client_zone, minimum, addresses, priorities, same):
    snap = snapshot(nodes=NODES).snapshot
    assert same_zone(snap, instances, client_zone, minimum=minimum) == ZoneChoice(addresses, priorities, same)


def test_same_zone_spills_over_when_the_zone_fails():
    """The caller passes the healthy instances: when the zone's fail, everyone gets the rest."""
    snap = snapshot(nodes=NODES).snapshot
    healthy = (B1, C1)                                       # A1 and A2 failed their checks
    assert same_zone(snap, healthy, "a", minimum=1) == ZoneChoice(healthy, (1, 1), False)


# -- intentions --------------------------------------------------------------------------


def entries(*specs):
    """("db", ("web", "deny"), ("*", "allow")), ... -> {name: Intention}"""
    return {name: Intention(name, tuple(IntentionSource(n, a) for n, a in sources)) for name, *sources in specs}


DB_WEB_DENY = entries(("db", ("web", "deny"), ("*", "allow")))
DB_WILDCARD_FIRST = entries(("db", ("*", "deny"), ("web", "allow")))


@pytest.mark.parametrize("table,services,destination,default,decision", [
    (DB_WEB_DENY, {"web"}, "db", "allow", Decision(False, "web")),        # exact match
    (DB_WEB_DENY, {"api"}, "db", "deny", Decision(True, "api")),          # the wildcard, not the default
    (DB_WEB_DENY, set(), "db", "deny", Decision(True, "*")),              # no identity: the source "*"
    (DB_WILDCARD_FIRST, {"web"}, "db", "deny", Decision(True, "web")),    # exact wins whatever the order
    (DB_WILDCARD_FIRST, {"api"}, "db", "allow", Decision(False, "api")),
    (DB_WILDCARD_FIRST, set(), "db", "allow", Decision(False, "*")),
    (DB_WEB_DENY, {"web"}, "ledger", "allow", Decision(True, "web")),     # no entry: the default
    (DB_WEB_DENY, {"web"}, "ledger", "deny", Decision(False, "web")),
    (entries(("db", ("web", "deny"))), {"api"}, "db", "allow", Decision(True, "api")),   # no match: default
    (entries(("db", ("web", "deny"))), {"api"}, "db", "deny", Decision(False, "api")),
    (entries(("db",)), {"web"}, "db", "deny", Decision(False, "web")),    # an entry with no sources
    # several identities at one address: answered when any of them may connect (as Consul, per identity)
    (DB_WEB_DENY, {"web", "batch"}, "db", "deny", Decision(True, "batch")),
    (entries(("db", ("web", "deny"), ("batch", "deny"))), {"web", "batch"}, "db", "allow",
     Decision(False, "batch")),                                           # all denied: the first name decides
    (entries(("db", ("web", "deny"))), {"web", "batch"}, "db", "allow", Decision(True, "batch")),
    (entries(("db", ("web", "deny"))), {"web", "batch"}, "db", "deny", Decision(False, "batch")),
])
def test_intention_decision(table, services, destination, default, decision):
    assert intention_decision(table, frozenset(services), destination, default=default) == decision
    assert intention_allows(table, frozenset(services), destination, default=default) is decision.allowed


def test_decisive_identities_decide_as_the_full_set():
    """Narrowing a client's identities to those intentions name (plus "*" for the rest) never changes
    whether a name is answered, for every entry shape, default and set of identities."""
    table = entries(("db", ("web", "deny"), ("*", "allow")), ("api", ("batch", "allow"), ("web", "allow")),
                    ("ledger", ("*", "deny")), ("cache", ("web", "deny")))
    named = named_sources(table)
    assert named == {"web", "batch"}
    universe = ["web", "batch", "ops", "mail"]
    for n in range(len(universe) + 1):
        for services in map(frozenset, itertools.combinations(universe, n)):
            narrowed = decisive_identities(services, named)
            assert narrowed <= named | {"*"}
            for destination, default in itertools.product(["db", "api", "ledger", "cache", "other"], ["allow", "deny"]):
                assert intention_allows(table, narrowed, destination, default=default) == \
                    intention_allows(table, services, destination, default=default), (services, destination, default)
    assert decisive_identities(frozenset({"ops", "mail"}), named) == {"*"}
    assert decisive_identities(frozenset({"web", "mail"}), named) == {"web", "*"}
    assert decisive_identities(frozenset({"web"}), named) == {"web"}
    assert decisive_identities(frozenset(), named) == frozenset()


# -- client classes ------------------------------------------------------------------------

LOCALITIES = parse_localities([("10.20.1.0/24", "a"), ("10.20.0.0/16", "b"), ("fd00::/64", "c")])


def estate():
    return snapshot(
        inst("web-1", "web", "10.20.1.5", zone="z1"),
        inst("batch-1", "batch", "10.20.1.5"),                  # a second service at that address
        inst("api-1", "api", node="vm-a"),                      # on its node's address and zone
        inst("db-1", "db", "10.9.9.9", dc="dc2", zone="far"),   # another datacenter's
        inst("cache-1", "cache", "10.30.0.1"),                  # no zone anywhere
        inst("proxy-1", "proxy", "fd00::5"),
        nodes=(node("vm-a", "10.0.0.1", zone="a"), node("vm-x", "10.30.0.9", zone="x"),
               node("vm-far", "10.9.9.8", zone="far", dc="dc2")),
    ).snapshot


@pytest.mark.parametrize("source_ip,client", [
    ("10.20.1.5", ClientClass("z1", frozenset({"web", "batch"}))),   # instance zone over the [[locality]]
    ("10.0.0.1", ClientClass("a", frozenset({"api"}))),              # the instance on its node's address
    ("10.30.0.9", ClientClass("x", frozenset())),                     # a node (no instance there)
    ("10.30.0.1", ClientClass("", frozenset({"cache"}))),            # an identity without a zone
    ("10.20.1.77", ClientClass("a", frozenset())),                    # the first [[locality]] that contains it
    ("10.20.2.1", ClientClass("b", frozenset())),
    ("::ffff:10.20.2.1", ClientClass("b", frozenset())),              # IPv4-mapped is the IPv4 source
    ("fd00::5", ClientClass("c", frozenset({"proxy"}))),
    ("10.9.9.9", NOBODY),                                             # another datacenter's instance
    ("10.9.9.8", NOBODY),                                             # ... and node
    ("192.0.2.1", NOBODY),
    ("not-an-ip", NOBODY),
])
def test_classify(source_ip, client):
    assert classify(estate(), source_ip, localities=LOCALITIES) == client


def test_classifier_computes_once_per_source_and_snapshot():
    store = snapshot(inst("web-1", "web", "10.20.1.5"))
    classifier = Classifier(localities=LOCALITIES)
    for _ in range(100):
        assert classifier(store.snapshot, "10.20.1.5") == ClientClass("a", frozenset({"web"}))
        assert classifier(store.snapshot, "10.20.2.1") == ClientClass("b", frozenset())
    assert (classifier.misses, classifier.hits) == (2, 198)
    # the catalog changes: the address gets another identity, and the next query sees it
    store.publish("more", SourceState(services={("dc1", "batch"): (inst("batch-1", "batch", "10.20.1.5"),)}))
    assert classifier(store.snapshot, "10.20.1.5") == ClientClass("a", frozenset({"web", "batch"}))
    assert classifier.misses == 3 and len(classifier) == 1


def test_classifier_is_bounded_and_forgets_the_oldest_source_first():
    snap = snapshot().snapshot
    classifier = Classifier(localities=LOCALITIES, max_entries=3)
    for ip in ("10.20.0.1", "10.20.0.2", "10.20.0.3", "10.20.0.4"):
        classifier(snap, ip)
    assert len(classifier) == 3
    classifier(snap, "10.20.0.4")
    classifier(snap, "10.20.0.2")
    assert (classifier.misses, classifier.hits) == (4, 2)
    classifier(snap, "10.20.0.1")                                    # the oldest was forgotten
    assert classifier.misses == 5 and len(classifier) == 3
