"""Kubernetes zones end to end: the API server double, the real client and server; Nodes as catalog nodes."""
from __future__ import annotations

import dns.rcode
import pytest

from harness import ROOT, api, dig, query, rrset_values
from kube_double import KubeDouble, endpoint_slice, eventually, node, service
from meshdns.catalog.client_class import ClientClass, classify
from meshdns.catalog.locality import instance_zone

RBAC = ROOT / "deploy" / "kubernetes" / "rbac.yaml"
FAST = {"watch_timeout": "2s", "request_timeout": "1s", "backoff": "50ms", "max_backoff": "250ms"}


@pytest.fixture
def double():
    with KubeDouble(rbac=RBAC) as d:
        yield d
    assert d.denied == []


@pytest.fixture
def srv(double, tmp_path, start_server):
    zones = tmp_path / "zones"
    zones.mkdir()
    double.apply(node("n1", "172.18.0.2", zone="eu-west-1a"))
    double.apply(node("n2", "172.18.0.3", zone="eu-west-1b"))
    double.apply(node("n3", "172.18.0.4"))                               # no zone label
    double.apply(node("n4", None, external_ip="203.0.113.4"))           # no InternalIP
    double.apply(service("web"))
    double.apply(endpoint_slice("web", endpoints=[
        ("10.244.1.5", True, "n1", "eu-west-1a"),     # the endpoint says its zone
        ("10.244.2.7", True, "n2"),                   # it does not: its node's label
        ("10.244.3.9", True, "n3"),                   # neither
    ]))
    kc = double.kubeconfig(tmp_path / "east.kubeconfig", context="east")
    server = start_server({"kubernetes": [{"name": "east", "kubeconfig": str(kc), **FAST}]}, zones=zones)
    eventually(lambda: server.app.kubernetes[0].synced, what="cluster synced")
    eventually(lambda: len(server.app.store.snapshot.instances("web")) == 3, what="web mapped")
    return server


def zones_of(srv) -> dict[str, str]:
    snap = srv.app.store.snapshot
    return {i.address: instance_zone(snap, i) for i in snap.instances("web")}


def a(srv, name, rdtype="A"):
    return sorted(rrset_values(query(srv.dns_port, name, rdtype)))


def test_nodes_are_catalog_nodes_with_their_zone(srv):
    assert a(srv, "n1.node.consul") == ["172.18.0.2"]
    assert a(srv, "n2.node.dc1.consul") == ["172.18.0.3"]
    assert sorted(dig(srv.dns_port, "+short", "n1.node.consul", "TXT").split()) == \
        ['"external-source=kubernetes"', '"zone=eu-west-1a"']
    assert query(srv.dns_port, "n4.node.consul").rcode() == dns.rcode.NXDOMAIN
    # a node's address names the node (PTR), as Consul answers for its nodes
    assert dig(srv.dns_port, "+short", "-x", "172.18.0.2").split() == ["n1.node.dc1.consul."]

    nodes = {n["Node"]: n for n in api(srv.http, "GET", "/v1/catalog/nodes").json()}
    assert nodes["n1"]["Address"] == "172.18.0.2" and nodes["n1"]["Meta"]["zone"] == "eu-west-1a"
    assert "zone" not in nodes["n3"]["Meta"] and "n4" not in nodes
    # the pods reference their nodes, and the endpoint's own zone is in the service meta
    pods = {s["ServiceAddress"]: s for s in api(srv.http, "GET", "/v1/catalog/service/web").json()}
    assert {ip: (p["Node"], p["ServiceMeta"].get("zone")) for ip, p in pods.items()} == {
        "10.244.1.5": ("n1", "eu-west-1a"), "10.244.2.7": ("n2", None), "10.244.3.9": ("n3", None)}


def test_instance_zone_is_the_endpoint_zone_else_the_node_label(srv):
    assert zones_of(srv) == {"10.244.1.5": "eu-west-1a", "10.244.2.7": "eu-west-1b", "10.244.3.9": ""}
    snap = srv.app.store.snapshot
    assert classify(snap, "10.244.2.7", localities=()) == ClientClass("eu-west-1b", frozenset({"web"}))
    assert classify(snap, "172.18.0.4", localities=()) == ClientClass("", frozenset())
    assert classify(snap, "172.18.0.3", localities=()) == ClientClass("eu-west-1b", frozenset())   # the node


def test_node_label_changes_follow_without_touching_the_pods(srv, double):
    version = srv.app.store.snapshot.version
    double.apply(node("n2", "172.18.0.3", zone="eu-west-1c"))       # relabelled
    double.apply(node("n3", "172.18.0.4", zone="eu-west-1a"))       # labelled at last
    eventually(lambda: zones_of(srv) == {"10.244.1.5": "eu-west-1a", "10.244.2.7": "eu-west-1c",
                                         "10.244.3.9": "eu-west-1a"}, what="node labels followed")
    assert srv.app.store.snapshot.version > version
    assert "zone=eu-west-1c" in dig(srv.dns_port, "+short", "n2.node.consul", "TXT")

    double.delete("nodes", "", "n2")
    eventually(lambda: query(srv.dns_port, "n2.node.consul").rcode() == dns.rcode.NXDOMAIN, what="node gone")
    assert zones_of(srv)["10.244.2.7"] == ""
    assert a(srv, "web.service.consul") == ["10.244.1.5", "10.244.2.7", "10.244.3.9"]   # the pod still answers


def test_node_heartbeats_do_not_publish(srv, double):
    """A kubelet's status updates change nothing we publish: the catalog keeps its version."""
    source = srv.app.kubernetes[0]
    version = srv.app.store.snapshot.version
    events = source.events
    for _ in range(3):
        double.apply(node("n1", "172.18.0.2", zone="eu-west-1a"))     # fresh heartbeat times, same node
    double.apply(node("n3", "172.18.0.4", zone="eu-west-1b"))         # then a real change, on the same watch
    eventually(lambda: source.events >= events + 4, what="heartbeats and the change received")
    eventually(lambda: zones_of(srv)["10.244.3.9"] == "eu-west-1b", what="the change published")
    assert srv.app.store.snapshot.version == version + 1
