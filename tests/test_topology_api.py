"""GET /v1/meshdns/topology: who resolved whom, from DNS queries sent from bound loopback addresses."""
import socket

import dns.message
import dns.query
import dns.rcode
import pytest

from harness import ServerProcess, api, query, wait_until
from meshdns.api.topology import graph
from meshdns.catalog.identity import Identities
from meshdns.catalog.model import Instance, SourceState, Split, SplitTarget
from meshdns.catalog.store import Store

ZONE = """
[[service]]
name = "legacy-billing"
address = "192.168.28.213"
port = 8080

[[service]]
name = "billing"
address = "10.2.0.1"
port = 8080
tags = ["v2"]

[[service]]
name = "web"
address = "127.0.0.21"
port = 80

[[node]]
name = "db-node-1"
address = "192.168.30.10"

[[split]]
name = "billing"
targets = [{ service = "legacy-billing", weight = 90 }, { service = "billing", tag = "v2", weight = 10 }]
"""


@pytest.fixture
def zones(tmp_path):
    path = tmp_path / "zones"
    path.mkdir()
    (path / "estate.toml").write_text(ZONE)
    return path


def topology(base, window=None):
    reply = api(base, "GET", "/v1/meshdns/topology" + (f"?window={window}" if window else ""))
    assert reply.status == 200, reply
    return reply.json()


def edges(body):
    return {(e["source"], e["target"]): e["count"] for e in body["edges"]}


def test_every_answer_is_counted_once_whichever_path_answers_it(start_server, zones):
    srv = start_server(zones=zones)
    for _ in range(10):   # the fast path, then the rendered replay of the same packet
        assert query(srv.dns_port, "billing.service.consul", source="127.0.0.11").answer
    for _ in range(3):
        assert query(srv.dns_port, "billing.service.consul", tcp=True, source="127.0.0.11").answer
    for _ in range(2):    # class ANY: the general path
        q = dns.message.make_query("billing.service.consul", "A", rdclass="ANY")
        assert dns.query.udp(q, "127.0.0.1", port=srv.dns_port, timeout=3, source="127.0.0.11").answer
    body = topology(srv.http)
    assert edges(body) == {("127.0.0.0/24", "billing"): 15}
    edge = body["edges"][0]
    assert edge == {"source": "127.0.0.0/24", "target": "billing", "count": 15, "rate_per_min": 15.0,
                    "denied": False}
    assert {"name": "127.0.0.0/24", "kind": "client", "addresses": 1} in body["nodes"]
    assert {"name": "billing", "kind": "split", "addresses": 0} in body["nodes"]
    assert body["window"] == "15m" and body["minutes"] == 1 and body["dropped"] == 0 and body["enabled"]
    assert body["generated"].endswith("Z")


def test_clients_are_their_services_else_their_24(start_server, zones):
    srv = start_server(zones=zones)
    for source, name, n in [("127.0.0.11", "billing", 3), ("127.0.0.12", "billing", 2),
                            ("127.0.0.21", "legacy-billing", 4), ("127.0.0.21", "v2.billing", 1),
                            ("127.0.1.5", "_billing._tcp", 1)]:
        for _ in range(n):
            query(srv.dns_port, f"{name}.service.consul", "SRV" if name.startswith("_") else "A", source=source)
    # names that are no service: a node, an encoded address, an unknown name
    query(srv.dns_port, "db-node-1.node.consul", source="127.0.0.11")
    query(srv.dns_port, "7f00000b.addr.consul", source="127.0.0.11")
    query(srv.dns_port, "nothing.here.consul", source="127.0.0.11")
    query(srv.dns_port, "decommissioned.service.consul", source="127.0.0.11")
    body = topology(srv.http)
    assert body["other"] == 4
    assert edges(body) == {("127.0.0.0/24", "billing"): 5, ("web", "legacy-billing"): 4, ("web", "billing"): 1,
                           ("127.0.1.0/24", "billing"): 1}
    nodes = {n["name"]: (n["kind"], n["addresses"]) for n in body["nodes"]}
    assert nodes == {"127.0.0.0/24": ("client", 2), "127.0.1.0/24": ("client", 1), "web": ("service", 1),
                     "billing": ("split", 0), "legacy-billing": ("service", 0)}
    assert [(e["source"], e["target"]) for e in body["edges"]][:2] == [("127.0.0.0/24", "billing"),
                                                                       ("web", "legacy-billing")]


def test_a_client_is_named_by_a_service_registered_at_its_address_later(start_server, zones):
    srv = start_server(zones=zones)
    query(srv.dns_port, "legacy-billing.service.consul", source="127.0.0.31")
    assert edges(topology(srv.http)) == {("127.0.0.0/24", "legacy-billing"): 1}
    reply = api(srv.http, "PUT", "/v1/agent/service/register", {"Name": "reports", "Address": "127.0.0.31"})
    assert reply.status == 200, reply
    assert edges(topology(srv.http)) == {("reports", "legacy-billing"): 1}


@pytest.mark.parametrize("window", ["0m", "16m", "1h", "90s", "soon", "-5m"])
def test_a_bad_window_is_refused_naming_it(start_server, zones, window):
    srv = start_server(zones=zones)
    reply = api(srv.http, "GET", f"/v1/meshdns/topology?window={window}")
    assert reply.status == 400 and "window" in reply.text, reply


def test_windows_from_one_minute_to_the_configured_longest(start_server, zones):
    srv = start_server({"ui": {"topology_window": "30m"}}, zones=zones)
    query(srv.dns_port, "billing.service.consul", source="127.0.0.11")
    for window in ("1m", "5m", "30m"):
        body = topology(srv.http, window)
        assert body["window"] == window and edges(body) == {("127.0.0.0/24", "billing"): 1}
    assert topology(srv.http)["window"] == "30m"
    assert api(srv.http, "GET", "/v1/meshdns/topology?window=31m").status == 400


def test_counting_can_be_turned_off(start_server, zones):
    srv = start_server({"ui": {"topology": False}}, zones=zones)
    query(srv.dns_port, "billing.service.consul", source="127.0.0.11")
    body = topology(srv.http)
    assert body["enabled"] is False and body["edges"] == [] and body["nodes"] == []


def test_100000_distinct_sources_keep_memory_bounded_and_are_reported_as_dropped(start_server, zones):
    srv = start_server({"ui": {"topology_max_keys": 10_000}}, zones=zones)
    packet = dns.message.make_query("billing.service.consul", "A").to_wire()

    def flood():
        handle = srv.app.handler.handle
        for i in range(100_000):   # the server's own handler, on its loop, with 100,000 source addresses
            assert handle(packet, (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 5353), tcp=False) is not None

    srv.call(flood)
    body = topology(srv.http)
    assert body["dropped"] == 90_000
    assert sum(e["count"] for e in body["edges"]) == 10_000
    clients = [n for n in body["nodes"] if n["kind"] == "client"]
    # the first 10,000 sources: 39 whole /24s and 16 addresses of the 40th
    assert sorted(n["addresses"] for n in clients) == [16] + [256] * 39


def test_workers_answers_are_counted_too(tmp_path, zones):
    srv = ServerProcess("--zones", str(zones), "--data-dir", str(tmp_path / "data"), "--workers", "2").start()
    try:
        wait_until(lambda: "dns worker 1 answering" in srv.stderr(), timeout=30, what="the worker listens")
        wire = dns.message.make_query("legacy-billing.service.consul", "A").to_wire()
        for _ in range(60):   # a new socket (source port) each time: SO_REUSEPORT spreads them over both
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.11", 0))
                s.settimeout(3)
                s.sendto(wire, ("127.0.0.1", srv.dns_port))
                s.recv(4096)
        wait_until(lambda: edges(topology(srv.http)) == {("127.0.0.0/24", "legacy-billing"): 60}, timeout=20,
                   what="the worker's counts reach the primary")
    finally:
        srv.stop()


# -- the graph from counts, without a server ----------------------------------------------


def test_graph_names_targets_by_service_and_rates_by_minutes_counted():
    store = Store(datacenter="dc1")
    web = Instance(id="web-1", service="web", datacenter="dc1", address="10.0.0.5", source="t")
    ledger = Instance(id="ledger-1", service="ledger", datacenter="dc1", address="10.0.8.1", source="t")
    api_dc2 = Instance(id="api-1", service="api", datacenter="dc2", address="10.9.0.1", source="t")
    store.publish("t", SourceState(services={("dc1", "web"): (web,), ("dc1", "ledger"): (ledger,),
                                             ("dc2", "api"): (api_dc2,)},
                                   splits={"pay": Split("pay", (SplitTarget("web", 100),))}))
    counts = {("10.0.0.5", "pay.service.consul."): 30, ("10.0.0.5", "api.service.dc2.consul."): 3,
              ("10.0.0.5", "web.service.dc1.consul."): 6, ("10.0.7.1", "www.example.com."): 9,
              ("10.0.7.1", "ledger.service.mesh.internal."): 12, ("10.0.7.2", "web-1.node.consul."): 2,
              ("10.0.7.3", "x7f3a9.service.consul."): 1, ("10.0.7.3", "pay.service.dc2.consul."): 1}
    found = graph(counts, store.snapshot, Identities(), domains=("consul.", "mesh.internal."), minutes=3)
    assert found["other"] == 9 + 2 + 1 + 1   # forwarded, node, made-up and another dc's split names
    assert found["edges"] == [
        {"source": "web", "target": "pay", "count": 30, "rate_per_min": 10.0, "denied": False},
        {"source": "10.0.7.0/24", "target": "ledger", "count": 12, "rate_per_min": 4.0, "denied": False},
        {"source": "web", "target": "web", "count": 6, "rate_per_min": 2.0, "denied": False},
        {"source": "web", "target": "api.dc2", "count": 3, "rate_per_min": 1.0, "denied": False},
    ]
    assert {n["name"]: n["kind"] for n in found["nodes"]} == {
        "10.0.7.0/24": "client", "api.dc2": "service", "ledger": "service", "pay": "split", "web": "service"}


def test_edges_denied_by_intention_views_are_marked(start_server, tmp_path):
    """With intention views on, the queries DNS answered as denied show as denied edges; others do not."""
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "estate.toml").write_text(ZONE + '''
[[service]]
name = "db"
address = "10.3.0.1"
port = 5432

[[service]]
name = "reports"
address = "127.0.0.22"
port = 80

[[intention]]
name = "db"
sources = [ { name = "web", action = "deny" }, { name = "*", action = "allow" } ]
''')
    srv = start_server({"dns": {"enforce_intentions": True}}, zones=zones)
    assert query(srv.dns_port, "db.service.consul", source="127.0.0.21").rcode() == dns.rcode.NXDOMAIN   # web
    assert query(srv.dns_port, "db.service.consul", source="127.0.0.22").answer                         # reports
    assert query(srv.dns_port, "db.service.consul", source="127.0.0.41").answer                         # no service
    assert query(srv.dns_port, "billing.service.consul", source="127.0.0.21").answer
    marked = {(e["source"], e["target"]): e["denied"] for e in topology(srv.http)["edges"]}
    assert marked == {("web", "db"): True, ("reports", "db"): False, ("127.0.0.0/24", "db"): False,
                      ("web", "billing"): False}


def test_without_intention_views_no_edge_is_denied(start_server, zones, tmp_path):
    (zones / "views.toml").write_text('[[intention]]\nname = "billing"\nsources = [ { name = "web", action = "deny" } ]\n')
    srv = start_server(zones=zones)
    assert query(srv.dns_port, "billing.service.consul", source="127.0.0.21").answer   # answered: views are off
    assert [e["denied"] for e in topology(srv.http)["edges"]] == [False]
