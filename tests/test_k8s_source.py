"""The Kubernetes source end to end: the API server double, the real `kubernetes` client, the real server, DNS."""
from __future__ import annotations


import dns.rcode
import pytest

from harness import ROOT, ServerProcess, dig, query, rrset_values
from kube_double import KubeDouble, endpoint_slice, eventually, node, service
from meshdns.app import build
from meshdns.config import ConfigError, parse_config
from meshdns.sources.kubernetes.watch import Backoff

RBAC = ROOT / "deploy" / "kubernetes" / "rbac.yaml"
FAST = {"watch_timeout": "2s", "request_timeout": "1s", "backoff": "50ms", "max_backoff": "250ms"}


@pytest.fixture
def double():
    """An API server that enforces deploy/kubernetes/rbac.yaml: a verb meshdns is not granted is a 403."""
    with KubeDouble(rbac=RBAC) as d:
        yield d
    assert d.denied == []


@pytest.fixture
def zones(tmp_path):
    path = tmp_path / "zones"
    path.mkdir()
    return path


def cluster(double: KubeDouble, tmp_path, name: str = "east", **extra) -> dict:
    kc = double.kubeconfig(tmp_path / f"{name}.kubeconfig", context=name)
    return {"name": name, "kubeconfig": str(kc), **FAST, **extra}


def start(start_server, zones, *clusters, **overrides):
    srv = start_server({"kubernetes": list(clusters), **overrides}, zones=zones)
    for source in srv.app.kubernetes:
        eventually(lambda: source.synced, what=f"cluster {source.cluster.name} synced")
    return srv


def a(srv, name: str, rdtype: str = "A") -> list[str]:
    return sorted(rrset_values(query(srv.dns_port, name, rdtype)))


def rcode(srv, name: str) -> int:
    return query(srv.dns_port, name, "A").rcode()


def web(double: KubeDouble, *pods, name="web", ns="default", **kw):
    double.apply(service(name, ns, **kw))
    double.apply(endpoint_slice(name, ns, endpoints=list(pods)))


def test_service_appears_through_the_watch_then_follows_readiness_and_deletion(double, tmp_path, zones,
                                                                               start_server):
    srv = start(start_server, zones, cluster(double, tmp_path, watch_timeout="5m"))
    assert rcode(srv, "web.service.consul") == dns.rcode.NXDOMAIN
    lists = double.list_count

    web(double, ("10.244.1.5", True), ("10.244.2.7", True))
    eventually(lambda: a(srv, "web.service.consul") == ["10.244.1.5", "10.244.2.7"])
    assert double.list_count == lists      # pushed by the open watches, not found by listing again
    out = dig(srv.dns_port, "+short", "web.service.consul", "SRV")
    assert sorted(out.split("\n")[:2]) == ["1 1 8080 0af40105.addr.dc1.consul.", "1 1 8080 0af40207.addr.dc1.consul."]

    double.apply(endpoint_slice("web", endpoints=[("10.244.1.5", True), ("10.244.2.7", False)]))
    eventually(lambda: a(srv, "web.service.consul") == ["10.244.1.5"], what="not-ready pod left the answers")

    double.delete("services", "default", "web")
    eventually(lambda: rcode(srv, "web.service.consul") == dns.rcode.NXDOMAIN, what="deleted service gone")
    status = srv.app.kubernetes[0].status()
    assert status["synced"] and status["connected"] and status["events"] >= 4 and status["errors"] == 0


def test_each_address_mode_answers_what_it_should(double, tmp_path, zones, start_server):
    double.apply(node("kind-worker", "172.18.0.2", external_ip="203.0.113.2"))
    double.apply(node("kind-worker2", "172.18.0.3"))
    double.apply(node("kind-worker3", "172.18.0.4", ready=False))
    pods = [("10.244.1.5", True, "kind-worker"), ("10.244.2.7", True, "kind-worker2")]
    web(double, *pods, name="pods")
    web(double, *pods, name="vip", annotations={"meshdns.io/address-mode": "clusterip"})
    web(double, *pods, name="shop", type="NodePort")
    web(double, *pods, name="edge", type="LoadBalancer")
    double.apply(service("billing-db", type="ExternalName", external_name="db.corp.example.com", ports=[]))
    srv = start(start_server, zones, cluster(double, tmp_path))

    assert a(srv, "pods.service.consul") == ["10.244.1.5", "10.244.2.7"]
    cluster_ip = double.get("services", "default", "vip")["spec"]["clusterIP"]
    assert a(srv, "vip.service.consul") == [cluster_ip]
    assert "80" in a(srv, "vip.service.consul", "SRV")[0].split()

    node_port = double.get("services", "default", "shop")["spec"]["ports"][0]["nodePort"]
    assert a(srv, "shop.service.consul") == ["172.18.0.2", "172.18.0.3"]
    srv_records = a(srv, "shop.service.consul", "SRV")
    assert srv_records == [f"1 1 {node_port} ac120002.addr.dc1.consul.", f"1 1 {node_port} ac120003.addr.dc1.consul."]
    additional = rrset_values(query(srv.dns_port, "shop.service.consul", "SRV"), "additional")
    assert sorted(additional) == ["172.18.0.2", "172.18.0.3"]

    # a LoadBalancer answers once its ingress is assigned
    assert rcode(srv, "edge.service.consul") == dns.rcode.NXDOMAIN
    double.apply(service("edge", type="LoadBalancer", lb_ingress=[{"ip": "198.51.100.7", "ipMode": "VIP"}]))
    eventually(lambda: a(srv, "edge.service.consul") == ["198.51.100.7"], what="LB ingress IP")

    msg = query(srv.dns_port, "billing-db.service.consul", "A")
    assert [rr.rdtype for rr in msg.answer] == [dns.rdatatype.CNAME]
    assert rrset_values(msg) == ["db.corp.example.com."]

    # the node port follows the nodes: one becomes not ready, the other comes back
    double.apply(node("kind-worker2", "172.18.0.3", ready=False))
    double.apply(node("kind-worker3", "172.18.0.4"))
    eventually(lambda: a(srv, "shop.service.consul") == ["172.18.0.2", "172.18.0.4"], what="node readiness")


def test_watch_survives_closed_streams_and_410_without_loss_or_duplicates(double, tmp_path, zones, start_server):
    web(double, ("10.244.1.5", True))
    web(double, ("10.244.3.1", True), name="api")
    web(double, ("10.244.4.1", True), name="old")
    srv = start(start_server, zones, cluster(double, tmp_path))
    source = srv.app.kubernetes[0]
    eventually(lambda: double.open_streams() == 3)

    # 1. streams closed (server timeout): the watch resumes from its resourceVersion
    double.close_streams()
    double.apply(endpoint_slice("web", endpoints=[("10.244.1.5", True), ("10.244.1.6", True)]))
    eventually(lambda: a(srv, "web.service.consul") == ["10.244.1.5", "10.244.1.6"])

    # 2. 410 as an ERROR event on the reconnect: changes made while no stream was open are
    #    only in the relist (history compacted)
    relists = source.relists
    double.atomically(lambda d: (d.close_streams(),
                                 d.apply(endpoint_slice("api", endpoints=[("10.244.3.2", True)])),
                                 d.delete("services", "default", "old"),
                                 d.compact(notify=False)))
    eventually(lambda: a(srv, "api.service.consul") == ["10.244.3.2"], what="change seen by relist")
    eventually(lambda: rcode(srv, "old.service.consul") == dns.rcode.NXDOMAIN, what="deletion seen by relist")
    assert source.relists > relists

    # 3. 410 as the HTTP status of the watch request
    double.gone_as_status = True
    relists = source.relists
    double.atomically(lambda d: (d.close_streams(),
                                 d.apply(endpoint_slice("web", endpoints=[("10.244.1.7", True)])),
                                 d.compact(notify=False)))
    eventually(lambda: a(srv, "web.service.consul") == ["10.244.1.7"], what="change seen after HTTP 410")
    assert source.relists > relists

    # 4. 410 sent on open streams (ERROR event with a Status)
    relists = source.relists
    double.compact(notify=True)
    eventually(lambda: source.relists >= relists + 3, what="every kind relisted")
    eventually(lambda: source.connected)
    assert a(srv, "web.service.consul") == ["10.244.1.7"]
    assert a(srv, "api.service.consul") == ["10.244.3.2"]
    insts = srv.app.store.snapshot.instances("web")
    assert len(insts) == len({i.id for i in insts}) == 1      # nothing duplicated by the relists
    assert source.status()["errors"] == 0


def test_api_server_outage_keeps_answers_and_catches_up(double, tmp_path, zones, start_server):
    web(double, ("10.244.1.5", True), ("10.244.2.7", True))
    srv = start(start_server, zones, cluster(double, tmp_path))
    source = srv.app.kubernetes[0]
    eventually(lambda: source.connected)

    double.go_down()
    eventually(lambda: source.errors > 0 and not source.connected, what="outage noticed")
    # what happens in the cluster meanwhile is seen only after it comes back
    double.atomically(lambda d: (d.apply(endpoint_slice("web", endpoints=[("10.244.2.7", True)])),
                                 d.apply(service("api")), d.apply(endpoint_slice("api", endpoints=[("10.244.3.1", True)])),
                                 d.compact(notify=False)))
    age = source.status()["last_event_age"]
    for attempt in range(1, 6):   # the outage lasts five more failed reconnects; answers do not change
        failed = source.errors
        eventually(lambda: source.errors > failed, what=f"reconnect attempt {attempt} failed")
        assert a(srv, "web.service.consul") == ["10.244.1.5", "10.244.2.7"]
        assert rcode(srv, "api.service.consul") == dns.rcode.NXDOMAIN
    status = source.status()
    assert status["synced"] and not status["connected"] and status["last_event_age"] > age
    assert "ConnectionRefusedError" in status["last_error"] or "refused" in status["last_error"].lower()

    double.come_back()
    eventually(lambda: a(srv, "web.service.consul") == ["10.244.2.7"], what="catch-up after the outage")
    eventually(lambda: a(srv, "api.service.consul") == ["10.244.3.1"])
    eventually(lambda: source.connected)


def test_silent_partition_is_noticed_by_the_client_timeout(double, tmp_path, zones, start_server):
    web(double, ("10.244.1.5", True))
    srv = start(start_server, zones, cluster(double, tmp_path, watch_timeout="1s", request_timeout="500ms"))
    source = srv.app.kubernetes[0]
    eventually(lambda: source.connected)
    double.freeze()   # connections stay up, nothing is answered
    eventually(lambda: source.errors > 0, timeout=6, what="read timeout noticed")
    assert "timeout" in source.last_error.lower() or "timed out" in source.last_error.lower()
    assert a(srv, "web.service.consul") == ["10.244.1.5"]
    double.thaw()
    double.apply(endpoint_slice("web", endpoints=[("10.244.1.9", True)]))
    eventually(lambda: a(srv, "web.service.consul") == ["10.244.1.9"], timeout=6)


def test_a_silent_watch_is_dropped_then_the_kind_listed_again(tmp_path, zones, start_server):
    """A watch that stays connected but carries no byte (a half-open connection) for watch_idle_timeout is
    dead: each kind is listed again and watched anew. Quiet watches that get bookmarks are kept."""
    with KubeDouble(rbac=RBAC, bookmark_interval=0.1) as double:
        web(double, ("10.244.1.5", True))
        srv = start(start_server, zones, cluster(double, tmp_path, watch_timeout="5m", watch_idle_timeout="2s"))
        source = srv.app.kubernetes[0]
        eventually(lambda: source.connected and source.bookmarks >= 60, timeout=30,
                   what="quiet watches kept alive by bookmarks")
        assert (source.relists, source.errors) == (0, 0)
        lists = double.list_count
        double.mute_streams()
        double.apply(endpoint_slice("web", endpoints=[("10.244.1.9", True)]))   # the muted watch never tells
        eventually(lambda: a(srv, "web.service.consul") == ["10.244.1.9"], timeout=30,
                   what="the change, through a new list")
        eventually(lambda: source.relists == 3 and source.connected, timeout=30, what="every kind listed again")
        assert double.list_count >= lists + 3
        assert "no bytes on the watch for 2s" in source.last_error and "timed out" in source.last_error
        watches = [p for m, p in double.requests if "watch=true" in p]
        assert watches and all("allowWatchBookmarks=true" in p for p in watches)
        # and it goes on from there: the new watches deliver events
        double.apply(endpoint_slice("web", endpoints=[("10.244.1.10", True)]))
        eventually(lambda: a(srv, "web.service.consul") == ["10.244.1.10"], timeout=30)


def test_two_clusters_are_two_datacenters(tmp_path, zones, start_server):
    with KubeDouble(rbac=RBAC) as east, KubeDouble(rbac=RBAC) as west:
        web(east, ("10.1.0.5", True))
        web(west, ("10.2.0.5", True), ("10.2.0.6", True))
        srv = start(start_server, zones, cluster(east, tmp_path, "east", datacenter="east"),
                    cluster(west, tmp_path, "west", datacenter="west"))
        assert a(srv, "web.service.east.consul") == ["10.1.0.5"]
        assert a(srv, "web.service.west.consul") == ["10.2.0.5", "10.2.0.6"]
        assert rcode(srv, "web.service.consul") == dns.rcode.NXDOMAIN   # dc1 has none
        west.delete("services", "default", "web")
        eventually(lambda: rcode(srv, "web.service.west.consul") == dns.rcode.NXDOMAIN)
        assert a(srv, "web.service.east.consul") == ["10.1.0.5"]


def test_vm_and_cluster_service_under_one_name(double, tmp_path, zones, start_server):
    (zones / "billing.toml").write_text(
        '[[service]]\nname = "billing"\naddress = "192.168.28.213"\nport = 8080\ntags = ["vm"]\n')
    web(double, ("10.244.1.5", True), name="billing")
    srv = start(start_server, zones, cluster(double, tmp_path))
    eventually(lambda: a(srv, "billing.service.consul") == ["10.244.1.5", "192.168.28.213"])
    assert a(srv, "k8s.billing.service.consul") == ["10.244.1.5"]
    assert a(srv, "vm.billing.service.consul") == ["192.168.28.213"]


def test_split_annotation_on_the_new_service_shifts_traffic(double, tmp_path, zones, start_server):
    """The strangler fig: the new billing pods carry the split between the VMs and themselves."""
    (zones / "legacy.toml").write_text('[[service]]\nname = "legacy-billing"\naddress = "192.168.28.213"\n'
                                       'port = 8080\n')
    web(double, ("10.244.1.5", True), name="billing",
        annotations={"meshdns.io/split": "legacy-billing=50,billing:k8s=50"})
    srv = start(start_server, zones, cluster(double, tmp_path))
    split = eventually(lambda: srv.app.store.snapshot.splits.get("billing"))
    assert split.source == "kubernetes:east"
    records = a(srv, "billing.service.consul", "SRV")
    assert len(records) == 2 and {r.split()[2] for r in records} == {"8080"}
    seen = {tuple(a(srv, "billing.service.consul")) for _ in range(60)}
    assert seen == {("192.168.28.213",), ("10.244.1.5",)}   # one side per answer, both sides served

    double.apply(service("billing", annotations={"meshdns.io/split": "legacy-billing=0,billing:k8s=100"}))
    eventually(lambda: all(a(srv, "billing.service.consul") == ["10.244.1.5"] for _ in range(20)),
               what="split moved to 100% new")
    assert srv.app.store.snapshot.splits["billing"].revision > split.revision


def test_bad_annotation_keeps_the_previous_mapping_and_is_reported(double, tmp_path, zones, start_server):
    web(double, ("10.244.1.5", True))
    srv = start(start_server, zones, cluster(double, tmp_path))
    source = srv.app.kubernetes[0]
    double.apply(service("web", annotations={"meshdns.io/service-port": "grpc"}))
    eventually(lambda: "default/web" in source.status()["problems"])
    assert "no port named 'grpc'" in source.status()["problems"]["default/web"]
    assert a(srv, "web.service.consul") == ["10.244.1.5"]
    double.apply(service("web", annotations={"meshdns.io/service-port": "http"}))
    eventually(lambda: not source.status()["problems"])


def test_unreadable_kubeconfig_is_a_config_error_naming_the_cluster(tmp_path):
    cfg = parse_config({"zones": str(tmp_path), "kubernetes": [{"name": "prod", "kubeconfig": str(tmp_path / "nope")}]})
    with pytest.raises(ConfigError, match="'prod'.*does not exist"):
        build(cfg)
    bad = tmp_path / "bad.kubeconfig"
    bad.write_text('{"apiVersion": "v1", "kind": "Config", "contexts": [], "clusters": [], "users": []}')
    cfg = parse_config({"zones": str(tmp_path), "kubernetes": [{"name": "prod", "kubeconfig": str(bad),
                                                                "context": "missing"}]})
    with pytest.raises(ConfigError, match="'prod'"):
        build(cfg)


def test_cli_kubeconfig_flag_runs_the_first_cluster(double, tmp_path, zones):
    """`meshdns serve --kubeconfig` in a real process: pods answer, SIGTERM stops the watch threads cleanly."""
    web(double, ("10.244.1.5", True))
    kc = double.kubeconfig(tmp_path / "config", context="kind-dev")
    proc = ServerProcess("--zones", str(zones), "--data-dir", str(tmp_path / "data"),
                         "--kubeconfig", str(kc), "--kube-context", "kind-dev").start()
    try:
        eventually(lambda: rrset_values(query(proc.dns_port, "web.service.consul", "A")) == ["10.244.1.5"])
        double.apply(endpoint_slice("web", endpoints=[("10.244.1.6", True)]))
        eventually(lambda: rrset_values(query(proc.dns_port, "web.service.consul", "A")) == ["10.244.1.6"])
    finally:
        code = proc.stop()
    assert code == 0, proc.stderr()
    assert "kubernetes cluster default synced" in proc.stderr()


def test_an_event_rebuilds_only_the_service_it_touches(double, tmp_path, zones, start_server):
    web(double, ("10.244.1.5", True))
    web(double, ("10.244.3.1", True), name="api")
    srv = start(start_server, zones, cluster(double, tmp_path))
    before = srv.app.store.snapshot
    double.apply(endpoint_slice("web", endpoints=[("10.244.1.6", True)]))
    eventually(lambda: a(srv, "web.service.consul") == ["10.244.1.6"])
    after = srv.app.store.snapshot
    assert after.services[("dc1", "api")] is before.services[("dc1", "api")]
    assert after.services[("dc1", "web")] is not before.services[("dc1", "web")]


def test_bookmarks_move_the_resource_version(double, tmp_path, zones, start_server):
    web(double, ("10.244.1.5", True))
    srv = start(start_server, zones, cluster(double, tmp_path))
    source = srv.app.kubernetes[0]
    eventually(lambda: double.open_streams("services") == 1)
    double.apply(node("kind-worker", "172.18.0.2"))      # moves the global resourceVersion, not a Service
    rv = double.call(lambda: double.rv)
    double.bookmark()
    eventually(lambda: source.bookmarks >= 3)
    double.close_streams()
    eventually(lambda: any(m == "GET" and "/api/v1/services?" in p and "watch=true" in p
                           and f"resourceVersion={rv}&" in p for m, p in double.requests),
               what="services watch resumed from the bookmark's resourceVersion")


def test_threads_stop_with_the_server(double, tmp_path, zones, start_server):
    import threading
    web(double, ("10.244.1.5", True))
    srv = start(start_server, zones, cluster(double, tmp_path, "stopping", sync_to_kubernetes="externalname",
                                             write_namespace="meshdns"))
    eventually(lambda: srv.app.reverse_syncs[0].synced)
    mine = lambda: [t.name for t in threading.enumerate() if t.name.startswith(("meshdns-watch-stopping",
                                                                                "meshdns-reverse-stopping"))]
    assert len(mine()) == 4
    srv.stop()
    assert mine() == []


def test_backoff_is_capped_exponential_with_jitter():
    import random
    b = Backoff(initial=0.5, cap=4.0, rng=random.Random(7))
    steps = [b.next() for _ in range(7)]
    for got, nominal in zip(steps, [0.5, 1, 2, 4, 4, 4, 4]):
        assert 0.8 * nominal <= got <= nominal
    assert len(set(steps[3:])) > 1           # jittered, not lock-step
    b.reset()
    assert b.next() <= 0.5


@pytest.mark.parametrize("clusters, message", [
    ([{"name": "a", "datacenter": "not a label"}], r"kubernetes\[0\].datacenter: 'not a label' is not a DNS label"),
    ([{"name": "a"}, {"name": "a"}], r"kubernetes\[1\].name: 'a' names two clusters"),
])
def test_cluster_settings_errors_name_the_cluster(tmp_path, double, clusters, message):
    kc = str(double.kubeconfig(tmp_path / "kc"))
    with pytest.raises(ConfigError, match=message):
        parse_config({"zones": str(tmp_path), "kubernetes": [{**c, "kubeconfig": kc} for c in clusters]})
