"""More than one datacenter: another site's catalog imported through its HTTP API and answered here.

Sites are real `meshdns serve` processes; the Consul-shaped peer (consul_double.py)
shows that a peer need not be meshdns, and lets the tests break the index rules
of blocking queries on purpose (an index going backwards, an index of 0, errors,
a slow peer).
"""
import dns.rcode

from consul_double import ConsulDouble, entry
from harness import api, free_port, metric_samples, query, rrset_values, wait_until
from sites import addresses, peer, readyz, register, sites  # noqa: F401  (sites is a fixture)

ZONES_DC2 = '''
[[node]]
name = "web-1"
address = "10.2.0.1"
meta = { rack = "r7" }

[[service]]
name = "billing"
node = "web-1"
port = 8080
tags = ["v2"]
'''

BOUND = 30  # seconds; every change here is answered after one blocking round trip, far sooner


def synced(srv, dc: str) -> bool:
    return readyz(srv)["sources"][f"peer/{dc}"]["synced"]


def test_register_in_one_site_resolve_in_the_other(sites):
    dc2 = sites.start("dc2", zones=ZONES_DC2)
    dc1 = sites.start("dc1", peers=[peer("dc2", dc2)])
    wait_until(lambda: synced(dc1, "dc2"), BOUND, what="dc2 imported into dc1")

    assert addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.1"]
    assert addresses(dc1.dns_port, "v2.billing.service.dc2.consul") == ["10.2.0.1"]
    srv = query(dc1.dns_port, "_billing._v2.service.dc2.consul", "SRV")
    assert rrset_values(srv) == ["1 1 8080 web-1.node.dc2.consul."]   # on its node, as Consul
    assert rrset_values(srv, "additional") == ["10.2.0.1"]
    assert addresses(dc1.dns_port, "0a020001.addr.dc2.consul") == ["10.2.0.1"]
    assert addresses(dc1.dns_port, "web-1.node.dc2.consul") == ["10.2.0.1"]
    assert rrset_values(query(dc1.dns_port, "web-1.node.dc2.consul", "TXT")) == ['"rack=r7"']
    assert query(dc1.dns_port, "billing.service.consul").rcode() == dns.rcode.NXDOMAIN  # dc1 has none

    # registered through dc2's API, with a TTL check: answered in dc1, and gone from it when it fails
    register(dc2, {"Name": "billing", "ID": "billing-vm", "Address": "10.2.0.9", "Port": 8080, "Tags": ["v1"],
                   "Check": {"CheckID": "vm-ttl", "TTL": "10m", "Status": "passing"}})
    wait_until(lambda: addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.1", "10.2.0.9"], BOUND)
    entries = api(dc1.http, "GET", "/v1/health/service/billing?dc=dc2").json()
    assert sorted(e["Service"]["ID"] for e in entries) == ["billing-vm", "billing-web-1"]
    assert {e["Node"]["Datacenter"] for e in entries} == {e["Service"]["Datacenter"] for e in entries} == {"dc2"}
    assert [e["Datacenter"] for e in api(dc1.http, "GET", "/v1/catalog/service/billing?dc=dc2").json()] == \
        ["dc2", "dc2"]
    assert api(dc1.http, "GET", "/v1/catalog/services?dc=dc2").json() == {"billing": ["v1", "v2"]}
    assert api(dc1.http, "GET", "/v1/catalog/services").json() == {}
    assert api(dc1.http, "GET", "/v1/catalog/datacenters").json() == ["dc1", "dc2"]

    assert api(dc2.http, "PUT", "/v1/agent/check/fail/vm-ttl").status == 200
    wait_until(lambda: addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.1"], BOUND)


def test_writes_naming_a_peer_datacenter_are_refused(sites):
    dc2 = sites.start("dc2", zones=ZONES_DC2)
    dc1 = sites.start("dc1", peers=[peer("dc2", dc2)])
    wait_until(lambda: synced(dc1, "dc2"), BOUND)
    r = api(dc1.http, "PUT", "/v1/catalog/register",
            {"Datacenter": "dc2", "Node": "intruder", "Address": "10.9.9.9", "Service": {"Service": "billing"}})
    assert r.status == 400 and r.text.startswith("Invalid request: Datacenter: 'dc2' is a peer datacenter")
    assert dc2.http in r.text
    r = api(dc1.http, "PUT", "/v1/catalog/deregister", {"Datacenter": "dc2", "Node": "web-1"})
    assert r.status == 400 and "Datacenter: 'dc2' is a peer datacenter" in r.text
    r = api(dc1.http, "PUT", "/v1/agent/service/register?dc=DC2", {"Name": "billing", "Port": 1})
    assert r.status == 400 and "dc: 'dc2' is a peer datacenter" in r.text
    assert api(dc1.http, "GET", "/v1/agent/services").json() == {}
    assert addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.1"]  # nothing half-written
    # reads with ?dc= are fine, and a datacenter that is no peer is written as before
    assert api(dc1.http, "GET", "/v1/catalog/nodes?dc=dc2").json()[0]["Node"] == "web-1"
    assert api(dc1.http, "PUT", "/v1/catalog/register",
               {"Datacenter": "dc9", "Node": "n9", "Address": "10.9.0.1"}).status == 200


def test_unreachable_peer_at_start_up_then_it_comes(sites):
    port = free_port()
    dc1 = sites.start("dc1", peers=[peer("dc2", f"http://127.0.0.1:{port}", backoff="100ms", max_backoff="500ms")])
    r = api(dc1.http, "GET", "/readyz")
    assert r.status == 200  # another site's outage never takes this one's DNS away
    state = r.json()["sources"]["peer/dc2"]
    assert state["synced"] is False and state["required"] is False and state["connected"] is False
    wait_until(lambda: f"127.0.0.1:{port}" in readyz(dc1)["sources"]["peer/dc2"]["errors"].get("peer", ""), BOUND)
    assert query(dc1.dns_port, "billing.service.dc2.consul").rcode() == dns.rcode.NXDOMAIN
    assert api(dc1.http, "GET", "/v1/catalog/datacenters").json() == ["dc1", "dc2"]
    samples = metric_samples(dc1.http)
    assert samples[("meshdns_peer_synced", (("datacenter", "dc2"),))] == 0
    assert ("meshdns_peer_sync_age_seconds", (("datacenter", "dc2"),)) not in samples

    double = ConsulDouble(port=port).start()
    try:
        double.set_service("billing", [entry("web-1", "10.2.0.1", "billing", 8080)])
        wait_until(lambda: synced(dc1, "dc2"), BOUND, what="resumes by itself")
        assert addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.1"]
        state = readyz(dc1)["sources"]["peer/dc2"]
        assert state["connected"] is True and state["stale"] is False and state["errors"] == {}
    finally:
        double.stop()


def test_a_peer_that_goes_away_stays_served_stale_and_resumes(sites):
    dc2 = sites.start("dc2", zones=ZONES_DC2)
    dc1 = sites.start("dc1", peers=[peer("dc2", dc2, backoff="100ms", max_backoff="500ms")])
    wait_until(lambda: synced(dc1, "dc2"), BOUND)
    labels = (("datacenter", "dc2"),)
    assert metric_samples(dc1.http)[("meshdns_peer_sync_age_seconds", labels)] == 0

    port = dc2.http_port
    dc2.kill()
    wait_until(lambda: readyz(dc1)["sources"]["peer/dc2"]["stale"], BOUND, what="reported stale")
    first = readyz(dc1)["sources"]["peer/dc2"]["sync_age_seconds"]
    wait_until(lambda: readyz(dc1)["sources"]["peer/dc2"]["sync_age_seconds"] > first, BOUND, what="age grows")
    r = api(dc1.http, "GET", "/readyz")
    assert r.status == 200 and r.json()["sources"]["peer/dc2"]["synced"] is True  # its last state is served
    assert addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.1"]
    samples = metric_samples(dc1.http)
    assert samples[("meshdns_peer_connected", labels)] == 0
    assert samples[("meshdns_peer_sync_age_seconds", labels)] > 0
    assert samples[("meshdns_peer_errors_total", labels)] >= 1

    dc2 = sites.start("dc2", zones=ZONES_DC2, http_port=port)
    register(dc2, {"Name": "billing", "ID": "billing-vm", "Address": "10.2.0.9", "Port": 8080})
    wait_until(lambda: addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.1", "10.2.0.9"], BOUND)
    wait_until(lambda: not readyz(dc1)["sources"]["peer/dc2"]["stale"], BOUND)
    assert metric_samples(dc1.http)[("meshdns_peer_sync_age_seconds", labels)] == 0


# -- a Consul-shaped peer -------------------------------------------------------------


def test_a_consul_peer_with_a_token_and_service_globs(sites, tmp_path):
    token_file = tmp_path / "dc2.token"
    token_file.write_text("b5d3-secret-token\n")
    double = ConsulDouble(token="b5d3-secret-token").start()
    try:
        double.set_service("billing", [entry("web-1", "10.2.0.1", "billing", 8080, tags=["v2"]),
                                       entry("web-2", "10.2.0.2", "billing", 8080, status="warning"),
                                       entry("web-3", "10.2.0.3", "billing", 8080, node_status="critical"),
                                       entry("web-4", "10.2.0.4", "billing", 8080, service_address="10.2.1.4"),
                                       entry("web-5", "999.1.1.1", "billing", 8080)])  # skipped, reported
        double.set_service("billing-db", [entry("db-1", "10.2.0.5", "billing-db", 5432)])
        double.set_service("internal", [entry("x-1", "10.2.0.6", "internal", 1)])
        dc1 = sites.start("dc1", extra='log_level = "debug"',
                          peers=[peer("dc2", double.url, token_file=str(token_file), services=["billing*"])])
        wait_until(lambda: synced(dc1, "dc2"), BOUND)
        # warning answers, a critical node check hides its instance, a service address wins over the node's
        assert addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.1", "10.2.0.2", "10.2.1.4"]
        assert addresses(dc1.dns_port, "billing-db.service.dc2.consul") == ["10.2.0.5"]
        assert query(dc1.dns_port, "internal.service.dc2.consul").rcode() == dns.rcode.NXDOMAIN  # not a glob
        assert not double.seen("/v1/health/service/internal")
        seen = double.requests
        assert {r.token for r in seen} == {"b5d3-secret-token"} and {r.dc for r in seen} == {"dc2"}
        state = readyz(dc1)["sources"]["peer/dc2"]
        assert (state["services"], state["instances"]) == (2, 5)
        assert state["errors"] == {"billing": "1 entries skipped, first: entry 4: Node.Address: '999.1.1.1' is "
                                              "neither an IP address nor a hostname"}
        dc1.stop()
        assert "b5d3-secret-token" not in dc1.stderr() and "peer dc2: first sync" in dc1.stderr()
    finally:
        double.stop()


def test_wrong_token_is_reported_not_synced(sites, tmp_path):
    token_file = tmp_path / "dc2.token"
    token_file.write_text("wrong-one")
    double = ConsulDouble(token="right-one").start()
    try:
        dc1 = sites.start("dc1", peers=[peer("dc2", double.url, token_file=str(token_file))])
        wait_until(lambda: "HTTP 403" in readyz(dc1)["sources"]["peer/dc2"]["errors"].get("peer", ""), BOUND)
        assert "wrong-one" not in api(dc1.http, "GET", "/readyz").text
    finally:
        double.stop()


def parked(double, path: str, index: str) -> bool:
    last = double.seen(path)
    return bool(last) and last[-1].index == index and double.parked >= 2


def test_index_going_backwards_starts_over_with_a_plain_read(sites):
    double = ConsulDouble().start()
    try:
        double.set_service("billing", [entry("web-1", "10.2.0.1", "billing", 8080)])  # index 11
        dc1 = sites.start("dc1", peers=[peer("dc2", double.url)])
        wait_until(lambda: synced(dc1, "dc2"), BOUND)
        path = "/v1/health/service/billing"
        wait_until(lambda: parked(double, path, "11"), BOUND, what="both watches blocking at index 11")
        before = len(double.seen(path))

        double.restore(5, {"billing": [entry("web-7", "10.2.0.7", "billing", 8080)]})  # a snapshot restore
        wait_until(lambda: addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.7"], BOUND)
        wait_until(lambda: parked(double, path, "5"), BOUND)
        after = double.seen(path)[before:]
        assert [r.index for r in after[:2]] == [None, "5"], after  # reset to 0 (a plain read), then block at 5
        assert after[1].wait.endswith("s") and float(after[1].wait[:-1]) <= 300

        # index 6 is below the 11 seen before: a watcher still waiting for 11 would miss it for 5 minutes
        double.set_service("billing", [entry("web-8", "10.2.0.8", "billing", 8080)])
        wait_until(lambda: addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.8"], BOUND)
    finally:
        double.stop()


def test_after_an_error_the_peer_is_read_again_even_at_the_same_index(sites):
    first = ConsulDouble().start()
    first.set_service("billing", [entry("web-1", "10.2.0.1", "billing", 8080)])  # index 11
    port = first.port
    try:
        dc1 = sites.start("dc1", peers=[peer("dc2", first.url, backoff="100ms", max_backoff="500ms")])
        wait_until(lambda: synced(dc1, "dc2"), BOUND)
        wait_until(lambda: parked(first, "/v1/health/service/billing", "11"), BOUND)
    finally:
        first.stop()
    wait_until(lambda: readyz(dc1)["sources"]["peer/dc2"]["stale"], BOUND)
    # restarted from other data that happens to carry the same index: waiting at 11 would miss it
    second = ConsulDouble(port=port).start()
    try:
        second.set_service("billing", [entry("web-2", "10.2.0.2", "billing", 8080)])  # index 11 again
        wait_until(lambda: addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.2"], BOUND)
        wait_until(lambda: not readyz(dc1)["sources"]["peer/dc2"]["stale"], BOUND)
    finally:
        second.stop()


def test_index_zero_is_used_as_one_and_never_hammers(sites):
    double = ConsulDouble().start()
    try:
        double.answer_index(0)
        double.set_service("billing", [entry("web-1", "10.2.0.1", "billing", 8080)])
        dc1 = sites.start("dc1", peers=[peer("dc2", double.url)])
        wait_until(lambda: synced(dc1, "dc2"), BOUND)
        path = "/v1/health/service/billing"
        wait_until(lambda: parked(double, path, "1"), BOUND, what="blocking at index 1")
        double.set_service("billing", [entry("web-2", "10.2.0.2", "billing", 8080)])
        wait_until(lambda: addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.2"], BOUND)
        wait_until(lambda: parked(double, path, "1"), BOUND)
        for p in (path, "/v1/catalog/services"):
            indexes = [r.index for r in double.seen(p)]
            assert indexes[0] is None and set(indexes[1:]) == {"1"} and len(indexes) <= 3, (p, indexes)
    finally:
        double.stop()


def test_errors_back_off_and_the_import_recovers(sites):
    double = ConsulDouble().start()
    try:
        double.set_service("billing", [entry("web-1", "10.2.0.1", "billing", 8080)])
        double.fail_next(500, 500, 500, 500)
        dc1 = sites.start("dc1", peers=[peer("dc2", double.url, backoff="200ms", max_backoff="1s")])
        wait_until(lambda: synced(dc1, "dc2"), BOUND)
        assert addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.1"]
        times = [r.at for r in double.seen("/v1/catalog/services")][:5]
        gaps = [b - a for a, b in zip(times, times[1:])]
        # each wait is 80-100% of a step that doubles from 200ms: never sooner than these
        assert all(gap >= least for gap, least in zip(gaps, (0.16, 0.32, 0.64, 0.8))), gaps
        samples = metric_samples(dc1.http)
        assert samples[("meshdns_peer_errors_total", (("datacenter", "dc2"),))] == 4
        assert readyz(dc1)["sources"]["peer/dc2"]["errors"] == {}
    finally:
        double.stop()


def test_a_slow_peer_holds_nothing_else_up(sites):
    slow, fast = ConsulDouble().start(), ConsulDouble().start()
    try:
        slow.set_service("billing", [entry("web-1", "10.2.0.1", "billing", 8080)])
        fast.set_service("billing", [entry("web-9", "10.3.0.9", "billing", 8080)])
        slow.hold()
        dc1 = sites.start("dc1", zones='[[service]]\nname = "local"\naddress = "10.1.0.1"\n',
                          peers=[peer("dc2", slow.url, timeout="1s", backoff="100ms", max_backoff="500ms"),
                                 peer("dc3", fast.url)])
        assert addresses(dc1.dns_port, "local.service.consul") == ["10.1.0.1"]
        wait_until(lambda: synced(dc1, "dc3"), BOUND)
        assert addresses(dc1.dns_port, "billing.service.dc3.consul") == ["10.3.0.9"]
        wait_until(lambda: "no answer within 1s" in readyz(dc1)["sources"]["peer/dc2"]["errors"].get("peer", ""),
                   BOUND, what="the held request timed out")
        assert not synced(dc1, "dc2") and api(dc1.http, "GET", "/readyz").status == 200
        slow.release()
        wait_until(lambda: synced(dc1, "dc2"), BOUND)
        assert addresses(dc1.dns_port, "billing.service.dc2.consul") == ["10.2.0.1"]
    finally:
        slow.stop()
        fast.stop()


def test_services_that_leave_the_peer_leave_here(sites):
    double = ConsulDouble().start()
    try:
        double.set_service("billing", [entry("web-1", "10.2.0.1", "billing", 8080)])
        double.set_service("billing-db", [entry("db-1", "10.2.0.5", "billing-db", 5432)])
        dc1 = sites.start("dc1", peers=[peer("dc2", double.url)])
        wait_until(lambda: synced(dc1, "dc2"), BOUND)
        double.remove_service("billing-db")
        wait_until(lambda: query(dc1.dns_port, "billing-db.service.dc2.consul").rcode() == dns.rcode.NXDOMAIN,
                   BOUND)
        assert query(dc1.dns_port, "db-1.node.dc2.consul").rcode() == dns.rcode.NXDOMAIN  # its node went too
        assert addresses(dc1.dns_port, "web-1.node.dc2.consul") == ["10.2.0.1"]
        assert readyz(dc1)["sources"]["peer/dc2"]["services"] == 1
    finally:
        double.stop()
