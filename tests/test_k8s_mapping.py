"""Table tests for the pure Kubernetes -> catalog mapping (DESIGN §3)."""
from __future__ import annotations

import pytest

from kube_double import endpoint_slice, node, service
from meshdns.catalog.model import Health, Node, Weights
from meshdns.catalog.validate import FieldError
from meshdns.sources.kubernetes.mapping import ClusterSettings, catalog_node, map_service

S = ClusterSettings(cluster="c1", datacenter="dc1")


def svc(name="web", ns="default", **kw):
    kw.setdefault("cluster_ip", "10.96.0.10")
    return service(name, ns, **kw)


def addrs(mapped):
    return sorted((i.address, i.port, i.health) for i in mapped.instances)


WEB_SLICE = endpoint_slice("web", endpoints=[("10.244.1.5", True, "n1"), ("10.244.2.7", True, "n2")])
NODES = {
    "n1": node("n1", "172.18.0.2", external_ip="203.0.113.2"),
    "n2": node("n2", "172.18.0.3"),
    "n3": node("n3", "172.18.0.4", external_ip="203.0.113.4", ready=False),
}


def test_clusterip_service_maps_to_its_pods_with_the_pods_port():
    m = map_service(svc(), [WEB_SLICE], {}, S)
    assert m.key == ("dc1", "web")
    assert addrs(m) == [("10.244.1.5", 8080, Health.PASSING), ("10.244.2.7", 8080, Health.PASSING)]
    inst = m.instances[0]
    assert inst.service == "web" and inst.datacenter == "dc1" and inst.source == "kubernetes:c1"
    assert inst.tags == ("k8s",)
    assert dict(inst.meta) == {"k8s-namespace": "default", "k8s-service": "web", "external-source": "kubernetes"}
    assert inst.node == "n1"
    assert len({i.id for i in m.instances}) == 2


@pytest.mark.parametrize("ready, publish_not_ready, expected", [
    (True, False, Health.PASSING),
    (False, False, Health.CRITICAL),
    (None, False, Health.PASSING),      # nil ready means ready (EndpointConditions)
    (False, True, Health.PASSING),      # publishNotReadyAddresses
])
def test_endpoint_health(ready, publish_not_ready, expected):
    sl = endpoint_slice("web", endpoints=[("10.244.1.5", ready)])
    m = map_service(svc(publish_not_ready=publish_not_ready), [sl], {}, S)
    assert addrs(m) == [("10.244.1.5", 8080, expected)]


def test_endpoints_deduplicated_across_slices_ready_anywhere_wins():
    a = endpoint_slice("web", name="web-aaaaa", endpoints=[("10.244.1.5", False), ("10.244.1.6", True)])
    b = endpoint_slice("web", name="web-bbbbb", endpoints=[("10.244.1.5", True)])
    m = map_service(svc(), [a, b], {}, S)
    assert addrs(m) == [("10.244.1.5", 8080, Health.PASSING), ("10.244.1.6", 8080, Health.PASSING)]


def test_ipv6_and_fqdn_slices():
    v6 = endpoint_slice("web", name="web-v6", address_type="IPv6", endpoints=[("fd00::0005", True)])
    fq = endpoint_slice("web", name="web-fq", address_type="FQDN", endpoints=[("Pod-1.Example.com", True)])
    m = map_service(svc(), [v6, fq], {}, S)
    assert sorted(i.address for i in m.instances) == ["fd00::5", "pod-1.example.com"]


@pytest.mark.parametrize("annotations, settings, ns, expected", [
    ({}, S, "default", "web"),
    ({}, ClusterSettings("c1", "dc1", namespace_suffix=True), "shop", "web-shop"),
    ({"meshdns.io/service-name": "Billing"}, S, "default", "billing"),
    ({"consul.hashicorp.com/service-name": "billing"}, S, "default", "billing"),
    ({"meshdns.io/service-name": "a", "consul.hashicorp.com/service-name": "b"}, S, "default", "a"),
    ({"meshdns.io/service-name": "billing"}, ClusterSettings("c1", "dc1", namespace_suffix=True), "shop",
     "billing"),
])
def test_catalog_name(annotations, settings, ns, expected):
    m = map_service(svc(ns=ns, annotations=annotations), [], {}, settings)
    assert m.key == ("dc1", expected)


def test_bad_service_name_annotation_names_the_annotation():
    with pytest.raises(FieldError, match="meshdns.io/service-name"):
        map_service(svc(annotations={"meshdns.io/service-name": "no spaces"}), [], {}, S)


def test_tags_and_meta_annotations():
    a = {"meshdns.io/service-tags": "v2, canary", "consul.hashicorp.com/service-tags": "canary,blue",
         "meshdns.io/service-meta-team": "payments", "consul.hashicorp.com/service-meta-tier": "1"}
    m = map_service(svc(annotations=a), [WEB_SLICE], {}, S)
    assert m.instances[0].tags == ("k8s", "v2", "canary", "blue")
    assert dict(m.instances[0].meta)["team"] == "payments"
    assert dict(m.instances[0].meta)["tier"] == "1"


@pytest.mark.parametrize("annotations, labels, ns, settings, synced", [
    ({}, None, "default", S, True),
    ({"meshdns.io/service-sync": "false"}, None, "default", S, False),
    ({"consul.hashicorp.com/service-sync": "false"}, None, "default", S, False),
    ({"meshdns.io/service-sync": "0"}, None, "default", S, False),
    ({"meshdns.io/service-sync": "true"}, None, "default", S, True),
    ({}, {"app.kubernetes.io/managed-by": "meshdns"}, "default", S, False),   # written by the reverse sync
    ({}, None, "kube-system", S, False),
    ({}, None, "kube-public", S, False),
    ({}, None, "team-a", ClusterSettings("c1", "dc1", allow_namespaces=("team-*",)), True),
    ({}, None, "default", ClusterSettings("c1", "dc1", allow_namespaces=("team-*",)), False),
    ({}, None, "team-b", ClusterSettings("c1", "dc1", allow_namespaces=("team-*",), deny_namespaces=("team-b",)),
     False),
])
def test_what_is_synced(annotations, labels, ns, settings, synced):
    m = map_service(svc(ns=ns, annotations=annotations, labels=labels), [], {}, settings)
    assert (m is not None) == synced


def test_clusterip_mode_is_passing_while_a_pod_is_ready():
    s = svc(annotations={"meshdns.io/address-mode": "clusterip"})
    assert addrs(map_service(s, [WEB_SLICE], {}, S)) == [("10.96.0.10", 80, Health.PASSING)]
    down = endpoint_slice("web", endpoints=[("10.244.1.5", False)])
    assert addrs(map_service(s, [down], {}, S)) == [("10.96.0.10", 80, Health.CRITICAL)]
    assert addrs(map_service(s, [], {}, S)) == [("10.96.0.10", 80, Health.CRITICAL)]


def test_cluster_setting_clusterip_and_headless_fallback():
    settings = ClusterSettings("c1", "dc1", address_mode="clusterip")
    assert addrs(map_service(svc(), [WEB_SLICE], {}, settings))[0][0] == "10.96.0.10"
    headless = svc(cluster_ip="None")
    assert [a for a, _, _ in addrs(map_service(headless, [WEB_SLICE], {}, settings))] == ["10.244.1.5", "10.244.2.7"]


def nodeport_svc(**kw):
    return svc(type="NodePort", ports=[{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}], **kw)


@pytest.mark.parametrize("how, expected", [
    ("internal", ["172.18.0.2", "172.18.0.3"]),
    ("external", ["203.0.113.2"]),
    ("external-first", ["172.18.0.3", "203.0.113.2"]),
])
def test_nodeport_uses_ready_nodes_addresses(how, expected):
    settings = ClusterSettings("c1", "dc1", nodeport_address=how)
    m = map_service(nodeport_svc(), [WEB_SLICE], NODES, settings)
    assert m.uses_nodes
    assert sorted(i.address for i in m.instances) == expected
    assert {i.port for i in m.instances} == {30080}
    assert {i.health for i in m.instances} == {Health.PASSING}


def test_nodeport_local_traffic_policy_only_nodes_with_ready_pods():
    sl = endpoint_slice("web", endpoints=[("10.244.1.5", True, "n2"), ("10.244.1.6", False, "n1")])
    m = map_service(nodeport_svc(external_traffic_policy="Local"), [sl], NODES, S)
    assert [(i.address, i.node) for i in m.instances] == [("172.18.0.3", "n2")]


def test_nodeport_mode_on_a_service_without_node_ports_is_an_error():
    with pytest.raises(FieldError, match="nodePort"):
        map_service(svc(annotations={"meshdns.io/address-mode": "nodeport"}), [WEB_SLICE], NODES, S)


def test_loadbalancer_ingress_ips_and_hostnames():
    lb = svc(type="LoadBalancer", lb_ingress=[{"ip": "198.51.100.7", "ipMode": "VIP"},
                                              {"hostname": "abc.elb.example.com"}])
    m = map_service(lb, [WEB_SLICE], {}, S)
    assert addrs(m) == [("198.51.100.7", 80, Health.PASSING), ("abc.elb.example.com", 80, Health.PASSING)]
    pending = svc(type="LoadBalancer")
    assert map_service(pending, [WEB_SLICE], {}, S).instances == ()


def test_address_mode_annotation_overrides_auto_and_bad_value_is_named():
    lb = svc(type="LoadBalancer", lb_ingress=[{"ip": "198.51.100.7"}],
             annotations={"meshdns.io/address-mode": "endpoints"})
    assert [a for a, _, _ in addrs(map_service(lb, [WEB_SLICE], {}, S))] == ["10.244.1.5", "10.244.2.7"]
    with pytest.raises(FieldError, match="meshdns.io/address-mode"):
        map_service(svc(annotations={"meshdns.io/address-mode": "pods"}), [], {}, S)


def test_external_name_is_a_hostname_instance():
    en = service("billing-db", type="ExternalName", external_name="db.corp.example.com",
                 ports=[{"port": 5432}])
    m = map_service(en, [], {}, S)
    assert addrs(m) == [("db.corp.example.com", 5432, Health.PASSING)]


@pytest.mark.parametrize("port_annotation, mode, expected", [
    (None, "endpoints", 8080),
    ("metrics", "endpoints", 9102),
    ("9090", "endpoints", 9102),        # service port 9090 -> the pods' metrics port
    ("metrics", "clusterip", 9090),
    ("7000", "clusterip", 7000),        # a number no port has: used as is
])
def test_port_annotation(port_annotation, mode, expected):
    ports = [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "metrics", "port": 9090, "targetPort": "m"}]
    a = {"meshdns.io/address-mode": mode}
    if port_annotation:
        a["meshdns.io/service-port"] = port_annotation
    sl = endpoint_slice("web", endpoints=[("10.244.1.5", True)],
                        ports=[{"name": "metrics", "port": 9102}, {"name": "http", "port": 8080}])
    m = map_service(svc(ports=ports, annotations=a), [sl], {}, S)
    assert [i.port for i in m.instances] == [expected]


def test_unknown_port_name_is_named():
    with pytest.raises(FieldError, match="no port named 'grpc'"):
        map_service(svc(annotations={"meshdns.io/service-port": "grpc"}), [WEB_SLICE], {}, S)


@pytest.mark.parametrize("text, expected", [
    ("10", Weights(passing=10, warning=1)),
    ("passing=5,warning=2", Weights(passing=5, warning=2)),
])
def test_weight_annotation(text, expected):
    m = map_service(svc(annotations={"meshdns.io/service-weight": text}), [WEB_SLICE], {}, S)
    assert {i.weights for i in m.instances} == {expected}


@pytest.mark.parametrize("text", ["heavy", "0", "passing=x"])
def test_bad_weight_is_named(text):
    with pytest.raises(FieldError, match="service-weight"):
        map_service(svc(annotations={"meshdns.io/service-weight": text}), [WEB_SLICE], {}, S)


def test_split_annotation():
    s = svc("billing", annotations={"meshdns.io/split": "legacy-billing=90, billing-v2=10"})
    m = map_service(s, [], {}, S)
    assert m.split.name == "billing" and m.split.source == "kubernetes:c1"
    assert [(t.service, t.weight, t.tag) for t in m.split.targets] == [("legacy-billing", 90.0, ""),
                                                                       ("billing-v2", 10.0, "")]
    tagged = map_service(svc("billing", annotations={"meshdns.io/split": "legacy-billing=90,billing:k8s=10"}),
                         [], {}, S)
    assert tagged.split.targets[1].tag == "k8s"


@pytest.mark.parametrize("text", ["legacy-billing", "legacy-billing=x", "billing=100", "a=0,b=0"])
def test_bad_split_is_named(text):
    with pytest.raises(FieldError, match="meshdns.io/split"):
        map_service(svc("billing", annotations={"meshdns.io/split": text}), [], {}, S)


def test_endpoint_zone_goes_into_the_instance_meta_else_none():
    sl = endpoint_slice("web", endpoints=[("10.244.1.5", True, "n1", "eu-west-1a"), ("10.244.2.7", True, "n2"),
                                          ("10.244.3.9", False, "n3", "eu-west-1c")])
    annotated = svc(annotations={"meshdns.io/service-meta-zone": "stale", "meshdns.io/service-meta-team": "pay"})
    m = map_service(annotated, [sl], {}, S)
    zones = {i.address: dict(i.meta).get("zone") for i in m.instances}
    # the endpoint's zone is what the cluster observed: it wins over a meta annotation
    assert zones == {"10.244.1.5": "eu-west-1a", "10.244.2.7": "stale", "10.244.3.9": "eu-west-1c"}
    first = next(i for i in m.instances if i.address == "10.244.1.5")
    assert list(first.meta) == sorted(first.meta) and dict(first.meta)["team"] == "pay"
    assert map_service(svc(), [sl], {}, S).instances[1].meta == \
        (("external-source", "kubernetes"), ("k8s-namespace", "default"), ("k8s-service", "web"))


@pytest.mark.parametrize("obj,expected", [
    (node("n1", "172.18.0.2", zone="eu-west-1a"),
     Node("n1", "172.18.0.2", "dc1", (("external-source", "kubernetes"), ("zone", "eu-west-1a")), "kubernetes:c1")),
    (node("ip-10-0-1-7.eu-west-1.compute.internal", "10.0.1.7", external_ip="203.0.113.2"),   # InternalIP only
     Node("ip-10-0-1-7.eu-west-1.compute.internal", "10.0.1.7", "dc1", (("external-source", "kubernetes"),),
          "kubernetes:c1")),
    (node("n3", "172.18.0.4", ready=False), Node("n3", "172.18.0.4", "dc1", (("external-source", "kubernetes"),),
                                                 "kubernetes:c1")),   # a node is a node, ready or not
    (node("n4", None, external_ip="203.0.113.4"), None),              # no InternalIP: nothing to answer with
    (node("n5", "not-an-ip"), None),
])
def test_catalog_node(obj, expected):
    assert catalog_node(obj, S) == expected
