"""Client identity tables: (catalog, source address) -> the services and nodes there, else the /24 or /64."""
import pytest

from meshdns.catalog.identity import ClientIdentity, Identities, canonical, identify, network_of
from meshdns.catalog.model import Instance, Node, SourceState
from meshdns.catalog.store import Store

DC = "dc1"


def inst(service, address="", *, node="", dc=DC):
    return Instance(id=f"{service}-{address or node}", service=service, datacenter=dc, address=address,
                    node=node, source="t")


def publish(store, *instances, nodes=()):
    services = {}
    for i in instances:
        services.setdefault((i.datacenter, i.service.lower()), []).append(i)
    return store.publish("t", SourceState(services={k: tuple(v) for k, v in services.items()},
                                          nodes={(n.datacenter, n.name.lower()): n for n in nodes}))


def catalog(*instances, nodes=()):
    return publish(Store(datacenter=DC), *instances, nodes=nodes)


SNAP = catalog(
    inst("web", "10.0.0.1"),
    inst("web", "10.0.0.2"),
    inst("batch", "10.0.0.2"),                  # two services share a VM
    inst("db", node="db-1"),                    # no address of its own: the node's
    inst("api", "10.0.3.7"),                    # on node k8s-1 (10.0.3.5), with its own address
    inst("ledger", "fd00:28::15"),
    inst("gateway", "gateway.example.com"),     # a hostname: no address to be asked from
    inst("east-web", "10.9.0.1", dc="east"),    # a peer's instance
    nodes=[Node("db-1", "10.0.9.9", DC), Node("k8s-1", "10.0.3.5", DC), Node("edge", "fd00::9", DC)],
)


@pytest.mark.parametrize("address, services, nodes, network", [
    ("10.0.0.1", ("web",), (), "10.0.0.0/24"),
    ("10.0.0.2", ("batch", "web"), (), "10.0.0.0/24"),
    ("10.0.9.9", ("db",), ("db-1",), "10.0.9.0/24"),
    ("10.0.3.5", (), ("k8s-1",), "10.0.3.0/24"),
    ("10.0.3.7", ("api",), (), "10.0.3.0/24"),
    ("10.0.3.99", (), (), "10.0.3.0/24"),
    ("127.0.0.11", (), (), "127.0.0.0/24"),
    ("fd00:28::15", ("ledger",), (), "fd00:28::/64"),
    ("fd00::9", (), ("edge",), "fd00::/64"),
    ("2001:db8:1:2:3:4:5:6", (), (), "2001:db8:1:2::/64"),
    ("::ffff:10.0.0.1", ("web",), (), "10.0.0.0/24"),     # a dual-stack socket's view of an IPv4 client
    ("fd00:0028:0000::0015", ("ledger",), (), "fd00:28::/64"),
    ("fe80::1%eth0", (), (), "fe80::/64"),
    ("10.9.0.1", ("east-web",), (), "10.9.0.0/24"),
])
def test_identity_of_a_source_address(address, services, nodes, network):
    found = identify(SNAP, address)
    assert (found.services, found.nodes, found.network) == (services, nodes, network)
    assert found.names == (services or (network,))


@pytest.mark.parametrize("address, expected", [
    ("10.1.2.3", "10.1.2.3"), ("::ffff:192.168.1.9", "192.168.1.9"), ("FD00::1", "fd00::1"),
    ("fe80::1%eth0", "fe80::1"), ("not-an-ip", "not-an-ip"),
])
def test_canonical_address(address, expected):
    assert canonical(address) == expected


@pytest.mark.parametrize("address, expected", [
    ("192.168.28.213", "192.168.28.0/24"), ("10.0.0.0", "10.0.0.0/24"), ("10.0.0.255", "10.0.0.0/24"),
    ("fd00:28::15", "fd00:28::/64"), ("::1", "::/64"), ("bogus", "bogus"),
])
def test_network_of(address, expected):
    assert network_of(address) == expected


def test_a_client_becomes_a_service_when_one_is_registered_at_its_address():
    store = Store(datacenter=DC)
    publish(store, inst("web", "10.0.0.1"))
    identities = Identities()
    first = identities(store.snapshot, "10.0.0.7")
    assert first == ClientIdentity("10.0.0.7", "10.0.0.0/24")
    assert identities(store.snapshot, "10.0.0.7") is first          # cached while the catalog stands
    publish(store, inst("web", "10.0.0.1"), inst("worker", "10.0.0.7"))
    assert identities(store.snapshot, "10.0.0.7").services == ("worker",)
    publish(store, inst("web", "10.0.0.1"))
    assert identities(store.snapshot, "10.0.0.7").names == ("10.0.0.0/24",)
