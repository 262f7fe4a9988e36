"""Reverse sync: VM services appear in a cluster as Services (ExternalName, or Service + EndpointSlice)."""
from __future__ import annotations

import pytest

from harness import query, rrset_values
from kube_double import KubeDouble, endpoint_slice, eventually, service
from meshdns.catalog.model import Health, Instance, Node, SourceState
from meshdns.catalog.store import Store
from meshdns.sources.kubernetes.reverse import desired_objects
from test_k8s_source import RBAC, cluster, start, web

NS = "meshdns"
MANAGED = {"app.kubernetes.io/managed-by": "meshdns"}


def vm(name, address, *, port=8080, health=Health.PASSING, dc="dc1", source="vm", node=""):
    return Instance(id=f"{name}-{address}", service=name, datacenter=dc, address=address, port=port,
                    health=health, source=source, node=node)


def snapshot(*instances, nodes=()):
    store = Store(datacenter="dc1")
    by_source: dict[str, dict] = {}
    for inst in instances:
        by_source.setdefault(inst.source, {}).setdefault((inst.datacenter, inst.service), []).append(inst)
    for src, services in by_source.items():
        store.publish(src, SourceState(services={k: tuple(v) for k, v in services.items()},
                                       nodes={(n.datacenter, n.name): n for n in nodes} if src == "vm" else {}))
    return store.snapshot


def desired(snap, mode="endpoints", **kw):
    args = dict(source="kubernetes:east", datacenter="dc1", local_datacenter="dc1", domain="consul.",
                mode=mode, namespace=NS, only_passing=False)
    args.update(kw)
    return desired_objects(snap, **args)


def test_externalname_points_at_meshdns():
    out = desired(snapshot(vm("legacy-billing", "192.168.28.213"), vm("east-dc", "10.0.0.1", dc="east")),
                  mode="externalname")
    assert list(out) == ["legacy-billing"]
    svc = out["legacy-billing"].service
    assert svc["spec"] == {"type": "ExternalName", "externalName": "legacy-billing.service.consul"}
    assert svc["metadata"]["labels"] == MANAGED
    assert svc["metadata"]["annotations"]["meshdns.io/service-sync"] == "false"
    assert out["legacy-billing"].slices == {}


def test_a_cluster_in_another_datacenter_gets_its_own_and_ours():
    snap = snapshot(vm("web", "10.0.0.1", dc="east"), vm("web", "192.168.1.1"), vm("db", "192.168.1.2"))
    out = desired(snap, mode="externalname", datacenter="east")
    assert out["web"].service["spec"]["externalName"] == "web.service.east.consul"
    assert out["db"].service["spec"]["externalName"] == "db.service.consul"


def test_endpoints_hold_healthy_addresses_grouped_by_family_and_port():
    snap = snapshot(vm("pay", "192.168.1.1"), vm("pay", "192.168.1.2", health=Health.CRITICAL),
                    vm("pay", "192.168.1.3", port=9090), vm("pay", "fd00::1"),
                    vm("pay", "192.168.1.4", health=Health.WARNING), vm("pay", "", node="vm-5"),
                    nodes=[Node("vm-5", "192.168.1.5", "dc1")])
    out = desired(snap)["pay"]
    assert out.service["spec"] == {"type": "ClusterIP", "ports": [{"port": 8080, "targetPort": 8080,
                                                                   "protocol": "TCP"}]}
    assert "selector" not in out.service["spec"]
    got = {name: ([e["addresses"][0] for e in s["endpoints"]], s["addressType"], s["ports"][0]["port"])
           for name, s in out.slices.items()}
    assert got == {"pay-meshdns-ipv4-8080": (["192.168.1.1", "192.168.1.4", "192.168.1.5"], "IPv4", 8080),
                   "pay-meshdns-ipv4-9090": (["192.168.1.3"], "IPv4", 9090),
                   "pay-meshdns-ipv6-8080": (["fd00::1"], "IPv6", 8080)}
    labels = out.slices["pay-meshdns-ipv4-8080"]["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "pay" and labels["app.kubernetes.io/managed-by"] == "meshdns"
    only_passing = desired(snap, only_passing=True)["pay"].slices["pay-meshdns-ipv4-8080"]
    assert [e["addresses"][0] for e in only_passing["endpoints"]] == ["192.168.1.1", "192.168.1.5"]


def test_skipped_services():
    snap = snapshot(vm("web", "10.244.1.5", source="kubernetes:east"), vm("web", "192.168.1.1"),
                    vm("Under_score", "192.168.1.2"), vm("other", "10.9.9.9", source="kubernetes:west"),
                    vm("noport", "192.168.1.3", port=0))
    out = desired(snap)
    assert sorted(out) == ["noport", "other"]       # web comes from this cluster; the other is no k8s name
    assert out["noport"].service["spec"] == {"type": "ClusterIP", "clusterIP": "None"}


# -- against the API server double ----------------------------------------------------


def ns_objects(double, plural):
    return {o["metadata"]["name"]: o for o in double.list(plural, NS)}


def publish(srv, source, *instances):
    state = SourceState(services={("dc1", name): tuple(i for i in instances if i.service == name)
                                  for name in {i.service for i in instances}})
    srv.call(srv.app.store.publish, source, state)


@pytest.fixture
def double():
    """An API server that enforces deploy/kubernetes/rbac.yaml: a verb meshdns is not granted is a 403."""
    with KubeDouble(rbac=RBAC) as d:
        yield d
    assert d.denied == []


def test_endpoints_mode_creates_updates_and_deletes_and_leaves_foreign_objects_alone(
        double, tmp_path, start_server):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "billing.toml").write_text(
        '[[node]]\nname = "billing-vm-1"\naddress = "192.168.28.213"\n'
        '[[node]]\nname = "billing-vm-2"\naddress = "192.168.28.214"\n'
        '[[service]]\nname = "legacy-billing"\nnode = "billing-vm-1"\nport = 8080\n'
        '[[service]]\nname = "legacy-billing"\nnode = "billing-vm-2"\nport = 8080\n')
    web(double, ("10.244.1.5", True))                                   # the cluster's own service
    # someone else's Service (opted out of the catalog), named like a VM service meshdns will want to write
    foreign = double.apply(service("inventory", NS, labels={"app": "inventory", "team": "stock"},
                                   annotations={"meshdns.io/service-sync": "false"}))
    foreign_slice = double.apply(endpoint_slice("inventory", NS, name="inventory-meshdns-ipv4-8080",
                                                endpoints=[("10.244.9.9", True)]))
    srv = start(start_server, zones, cluster(double, tmp_path, sync_to_kubernetes="endpoints",
                                             write_namespace=NS))
    reverse = srv.app.reverse_syncs[0]

    svc = eventually(lambda: ns_objects(double, "services").get("legacy-billing"), what="Service created")
    assert svc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshdns"
    assert "selector" not in svc["spec"] and svc["spec"]["ports"][0]["port"] == 8080
    slices = eventually(lambda: ns_objects(double, "endpointslices").get("legacy-billing-meshdns-ipv4-8080"))
    assert sorted(e["addresses"][0] for e in slices["endpoints"]) == ["192.168.28.213", "192.168.28.214"]
    assert "web" not in ns_objects(double, "services")                 # from this cluster: not written back

    # the Service meshdns wrote is never mapped back into the catalog
    eventually(lambda: reverse.synced and srv.app.kubernetes[0].events >= 2)
    insts = srv.app.store.snapshot.instances("legacy-billing")
    assert sorted(i.address or i.node for i in insts) == ["billing-vm-1", "billing-vm-2"]
    assert {i.source for i in insts} == {"zones"}

    # health flips follow: one instance critical -> out of the slice; back -> in again
    publish(srv, "vm", vm("payments", "192.168.5.1"), vm("payments", "192.168.5.2"),
            vm("inventory", "192.168.6.1"))
    pay = "payments-meshdns-ipv4-8080"
    eventually(lambda: len((ns_objects(double, "endpointslices").get(pay) or {}).get("endpoints", [])) == 2)
    publish(srv, "vm", vm("payments", "192.168.5.1"), vm("payments", "192.168.5.2", health=Health.CRITICAL),
            vm("inventory", "192.168.6.1"))
    eventually(lambda: [e["addresses"][0] for e in ns_objects(double, "endpointslices")[pay]["endpoints"]]
               == ["192.168.5.1"], what="critical instance left the slice")
    publish(srv, "vm", vm("payments", "192.168.5.1"), vm("payments", "192.168.5.2"),
            vm("inventory", "192.168.6.1"))
    eventually(lambda: len(ns_objects(double, "endpointslices")[pay]["endpoints"]) == 2, what="back in the slice")
    assert [w[0] for w in double.writes if w[3] == "payments"] == ["POST"]   # the Service was written once

    # gone from the catalog -> Service and slice deleted
    publish(srv, "vm", vm("inventory", "192.168.6.1"))
    eventually(lambda: "payments" not in ns_objects(double, "services"), what="Service deleted")
    assert pay not in ns_objects(double, "endpointslices")

    # the foreign inventory Service and slice were never written to, and still hold their content
    assert "inventory" in reverse.status()["conflicts"]
    touched = [w for w in double.writes if w[3] in ("inventory", "inventory-meshdns-ipv4-8080")]
    assert touched == []
    assert double.get("services", NS, "inventory") == foreign
    assert double.get("endpointslices", NS, "inventory-meshdns-ipv4-8080") == foreign_slice

    # an object of ours whose label someone removed is no longer ours: never deleted
    legacy = double.get("services", NS, "legacy-billing")
    legacy["metadata"]["labels"] = {"team": "took-it-over"}
    double.apply(legacy)
    (zones / "billing.toml").unlink()
    eventually(lambda: "legacy-billing-meshdns-ipv4-8080" not in ns_objects(double, "endpointslices"),
               what="our slice deleted")
    assert "legacy-billing" in ns_objects(double, "services")
    assert ("DELETE", "services", NS, "legacy-billing") not in double.writes
    assert reverse.status()["errors"] == 0


def test_externalname_mode_and_restart_cleans_up(double, tmp_path, start_server):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "vm.toml").write_text('[[service]]\nname = "legacy-billing"\naddress = "192.168.28.213"\nport = 8080\n'
                                   '[[service]]\nname = "ledger"\naddress = "192.168.28.215"\n')
    settings = cluster(double, tmp_path, sync_to_kubernetes="externalname", write_namespace=NS)
    srv = start(start_server, zones, settings)
    eventually(lambda: sorted(ns_objects(double, "services")) == ["ledger", "legacy-billing"])
    svc = ns_objects(double, "services")["legacy-billing"]
    assert svc["spec"]["type"] == "ExternalName"
    assert svc["spec"]["externalName"] == "legacy-billing.service.consul"
    srv.stop()

    # while meshdns is down, ledger leaves the catalog; the next start removes what is no longer wanted
    (zones / "vm.toml").write_text('[[service]]\nname = "legacy-billing"\naddress = "192.168.28.213"\n')
    srv = start(start_server, zones, settings)
    eventually(lambda: sorted(ns_objects(double, "services")) == ["legacy-billing"], what="stale object removed")
    # pods resolve the ExternalName through meshdns: the name it points at answers
    assert rrset_values(query(srv.dns_port, "legacy-billing.service.consul", "A")) == ["192.168.28.213"]


def test_rbac_bounds_the_reverse_sync_to_its_namespace(tmp_path, start_server):
    """With the shipped RBAC, a write_namespace other than the Role's is refused and reported, not half-done."""
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "vm.toml").write_text('[[service]]\nname = "ledger"\naddress = "192.168.28.215"\nport = 8080\n')
    with KubeDouble(rbac=RBAC) as d:
        srv = start(start_server, zones, cluster(d, tmp_path, sync_to_kubernetes="externalname",
                                                 write_namespace="default"))
        reverse = srv.app.reverse_syncs[0]
        eventually(lambda: reverse.errors > 0)
        assert "403" in reverse.status()["last_error"]
        assert {(verb, ns) for verb, _, _, ns in d.denied} == {("get", "default")}   # list is cluster-wide
        assert d.list("services", "default") == [] and d.writes == []
        assert srv.app.kubernetes[0].status()["errors"] == 0     # the forward sync is unaffected
