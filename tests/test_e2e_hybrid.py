"""The hybrid estate end to end, with real processes on loopback.

- a Kubernetes cluster (the API server double) running `billing` pods tagged v2;
- a VM service `legacy-billing` registered over HTTP with a live HTTP health check;
- a split `billing` = legacy-billing 90 / billing:v2 10, set through the API;
- unbound standing in for the cluster's CoreDNS, with the `consul` stub domain;
- meshdns (a real `meshdns serve` process) forwarding `cluster.local` to the
  cluster DNS and every other name to the VM network's upstream.

A "pod" asks through unbound, a "VM" asks meshdns directly; both find billing,
legacy-billing and each other's names. Then the VM side fails its health check
and the split moves to 0/100 by itself.
"""
from __future__ import annotations

import socket
import struct

import dns.flags
import dns.message
import pytest

from harness import FlipHttpServer, ServerProcess, Unbound, api, rrset_values, wait_until
from kube_double import KubeDouble, endpoint_slice, eventually, node, service

PODS = ["10.244.1.11", "10.244.2.12"]
VM = "192.168.28.213"

pytestmark = pytest.mark.skipif(Unbound.binary() is None, reason="unbound is not installed")


def ask(port: int, name: str, rdtype: str = "A", *, rd: bool = False) -> dns.message.Message:
    import dns.query
    q = dns.message.make_query(name, rdtype)
    if not rd:
        q.flags &= ~dns.flags.RD
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=3)


def shares(port: int, name: str, n: int = 200, *, rd: bool = False) -> dict[str, int]:
    """How many of n answers went to each side (legacy VM or pods)."""
    got = {"legacy": 0, "pods": 0, "other": 0}
    flags = 0x0100 if rd else 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        base = dns.message.make_query(name, "A").to_wire()
        for i in range(n):
            s.sendto(struct.pack("!HH", i, flags) + base[4:], ("127.0.0.1", port))
            msg = dns.message.from_wire(s.recv(4096))
            ips = sorted(rd_.to_text() for rrset in msg.answer for rd_ in rrset)
            got["legacy" if ips == [VM] else "pods" if ips == sorted(PODS) else "other"] += 1
    return got


@pytest.fixture
def estate(tmp_path, upstreams):
    cluster_dns = upstreams(name="cluster-dns")
    cluster_dns.add("billing.default.svc.cluster.local", "A", "10.96.14.2")
    vm_upstream = upstreams(name="vm-network")
    vm_upstream.add("example.internal", "A", "192.168.50.1")
    pod_upstream = upstreams(name="internet-stand-in")   # where unbound sends names that are not ours
    pod_upstream.add("pypi.example", "A", "192.0.2.80")

    with KubeDouble() as double:
        double.apply(node("kind-worker", "172.18.0.2"))
        double.apply(service("billing", annotations={"meshdns.io/service-tags": "v2"}))
        double.apply(endpoint_slice("billing", endpoints=[(ip, True) for ip in PODS]))
        kubeconfig = double.kubeconfig(tmp_path / "kubeconfig", context="kind")
        zones = tmp_path / "zones"
        zones.mkdir()
        config = tmp_path / "meshdns.toml"
        config.write_text(f'''
datacenter = "dc1"
[dns]
rng_seed = 9010                    # the split shares below are counted, not left to chance
[forwarding]
recursors = ["{vm_upstream.address}"]
timeout = "1s"
[[forwarding.zone]]
name = "cluster.local"
servers = ["{cluster_dns.address}"]
[[kubernetes]]
name = "kind"
kubeconfig = "{kubeconfig}"
context = "kind"
watch_timeout = "5s"
request_timeout = "2s"
''')
        check = FlipHttpServer(200)
        proc = ServerProcess("--config", str(config), "--zones", str(zones),
                             "--data-dir", str(tmp_path / "data")).start()
        coredns = Unbound(tmp_path, {"consul.": proc.dns_port, ".": pod_upstream.port}).start()
        try:
            yield {"meshdns": proc, "coredns": coredns, "check": check, "double": double,
                   "cluster_dns": cluster_dns, "vm_upstream": vm_upstream}
        finally:
            coredns.stop()
            proc.stop()
            check.close()


def test_hybrid_estate_migrates_by_split_and_follows_health(estate):
    mesh, coredns, check = estate["meshdns"], estate["coredns"], estate["check"]
    # the cluster side arrives through the Kubernetes watch
    wait_until(lambda: sorted(rrset_values(ask(mesh.dns_port, "billing.service.consul"))) == PODS, timeout=10)

    # the VM registers itself, with a live health check, as its boot script would
    reply = api(mesh.http, "PUT", "/v1/agent/service/register", {
        "Name": "legacy-billing", "ID": "legacy-billing-vm1", "Address": VM, "Port": 8080, "Tags": ["v1"],
        "Weights": {"Passing": 10, "Warning": 1},
        "Check": {"HTTP": check.url, "Interval": "200ms", "Timeout": "1s", "Status": "passing"}})
    assert reply.status == 200, reply

    # the migration step: 90% to the VMs, 10% to the pods
    reply = api(mesh.http, "PUT", "/v1/config", {"Kind": "service-splitter", "Name": "billing", "Splits": [
        {"Weight": 90, "Service": "legacy-billing"}, {"Weight": 10, "Service": "billing", "ServiceSubset": "v2"}]})
    assert reply.status == 200, reply

    # a VM asks meshdns directly
    vm_view = shares(mesh.dns_port, "billing.service.consul", 400)
    assert vm_view["other"] == 0 and 0.8 < vm_view["legacy"] / 400 < 0.97
    assert rrset_values(ask(mesh.dns_port, "legacy-billing.service.consul")) == [VM]
    # ... and finds the pods' cluster name through the forwarding rule, and other names upstream
    assert rrset_values(ask(mesh.dns_port, "billing.default.svc.cluster.local", rd=True)) == ["10.96.14.2"]
    assert rrset_values(ask(mesh.dns_port, "example.internal", rd=True)) == ["192.168.50.1"]
    assert estate["cluster_dns"].count("billing.default.svc.cluster.local") >= 1

    # a pod asks its cluster DNS (unbound with the consul stub domain) for the VM side and the split name
    assert rrset_values(ask(coredns.port, "legacy-billing.service.consul", rd=True)) == [VM]
    pod_view = rrset_values(ask(coredns.port, "billing.service.consul", rd=True))
    assert sorted(pod_view) in ([VM], sorted(PODS))
    srv = ask(coredns.port, "_billing._v2.service.consul", "SRV", rd=True)
    assert sorted(rd_.target.to_text() for rrset in srv.answer for rd_ in rrset if rrset.rdtype == 33) == [
        "0af4010b.addr.dc1.consul.", "0af4020c.addr.dc1.consul."]
    assert rrset_values(ask(coredns.port, "pypi.example", rd=True)) == ["192.0.2.80"]

    # the VM side fails its health check: within an interval or two every answer goes to the pods
    check.status = 500
    wait_until(lambda: shares(mesh.dns_port, "billing.service.consul", 100)["pods"] == 100, timeout=5)
    state = api(mesh.http, "GET", "/v1/config/service-splitter/billing").json()
    assert [(s["Service"], s["Share"]) for s in state["EffectiveShares"]] == [("billing", 1.0)]
    assert api(mesh.http, "GET", "/v1/health/service/legacy-billing?passing").json() == []

    # it recovers and the 90/10 split is back
    check.status = 200
    wait_until(lambda: shares(mesh.dns_port, "billing.service.consul", 200)["legacy"] > 150, timeout=5)

    # the operator finishes the migration: 0/100
    api(mesh.http, "PUT", "/v1/config", {"Kind": "service-splitter", "Name": "billing", "Splits": [
        {"Weight": 0, "Service": "legacy-billing"}, {"Weight": 100, "Service": "billing", "ServiceSubset": "v2"}]})
    assert shares(mesh.dns_port, "billing.service.consul", 100)["pods"] == 100

    # and the operator can see what was served, by target
    metrics = api(mesh.http, "GET", "/metrics").text
    assert 'meshdns_split_answers_total{split="billing",target="legacy-billing"}' in metrics
    assert 'meshdns_split_answers_total{split="billing",target="billing:v2"}' in metrics
    assert 'meshdns_kubernetes_synced{cluster="kind"} 1.0' in metrics
    assert f'meshdns_forward_replies_total{{outcome="NOERROR",upstream="{estate["cluster_dns"].address}"}}' in metrics
    assert 'meshdns_catalog_source_instances{source="kubernetes:kind"} 2.0' in metrics
    ready = api(mesh.http, "GET", "/readyz")
    assert ready.status == 200, ready


def test_pod_changes_reach_vms_and_pods_alike(estate):
    mesh, coredns, double = estate["meshdns"], estate["coredns"], estate["double"]
    eventually(lambda: sorted(rrset_values(ask(mesh.dns_port, "billing.service.consul"))) == PODS, timeout=10)
    double.apply(endpoint_slice("billing", endpoints=[(PODS[0], True), (PODS[1], False)]))
    eventually(lambda: rrset_values(ask(mesh.dns_port, "billing.service.consul")) == [PODS[0]], timeout=5)
    # unbound may still hold the old answer for its TTL (0 here: meshdns's default service_ttl)
    eventually(lambda: rrset_values(ask(coredns.port, "billing.service.consul", rd=True)) == [PODS[0]], timeout=5)
