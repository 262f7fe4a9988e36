"""Checks meshdns runs, against real little servers on 127.0.0.1 that the test flips.

Intervals are short (0.2 s); an instance must leave and rejoin DNS answers at
the next probe after the flip. That is asserted in probes the server ran, not in
seconds, so a busy machine cannot fail it; waits are bounded generously.
"""
import time

import dns.rcode
import pytest

from harness import FlipHttpServer, FlipTcpServer, api, query, rrset_values, wait_until

INTERVAL = 0.2
WAIT = 20.0  # a generous bound on a loaded machine; what is asserted is how many probes it took


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server(zones=tmp_path / "zones")


@pytest.fixture
def web():
    server = FlipHttpServer(200)
    yield server
    server.close()


def addresses(srv, name, rdtype="A"):
    msg = query(srv.dns_port, name, rdtype)
    return sorted(rrset_values(msg)) if msg.rcode() == dns.rcode.NOERROR else []


def time_until(predicate, timeout):
    start = time.monotonic()
    wait_until(predicate, timeout)
    return time.monotonic() - start


def probes_until(srv, predicate) -> int:
    """How many probes the server ran until predicate() held."""
    start = srv.app.health.probes_run
    wait_until(predicate, WAIT, interval=0.005)
    return srv.app.health.probes_run - start


def register(srv, sid, address, check, weights=None):
    body = {"ID": sid, "Name": "web", "Address": address, "Port": 8080, "Check": check}
    if weights:
        body["Weights"] = weights
    r = api(srv.http, "PUT", "/v1/agent/service/register", body)
    assert r.status == 200, r.text


def test_http_check_leaves_and_rejoins_dns(srv, web):
    register(srv, "web-1", "127.0.0.11", {"HTTP": web.url, "Interval": f"{INTERVAL}s", "Timeout": "1s"})
    register(srv, "web-2", "127.0.0.12", {"TCP": "127.0.0.1:%d" % web.port, "Interval": "10s",
                                          "Status": "passing"})
    joined = probes_until(srv, lambda: addresses(srv, "web.service.consul") == ["127.0.0.11", "127.0.0.12"])
    web.status = 500
    left = probes_until(srv, lambda: addresses(srv, "web.service.consul") == ["127.0.0.12"])
    web.status = 204
    rejoined = probes_until(srv, lambda: addresses(srv, "web.service.consul") == ["127.0.0.11", "127.0.0.12"])
    print(f"\nhttp check: joined after {joined}, left after {left}, rejoined after {rejoined} probes")
    # the probe under way at the flip, the next one, web-2's (10 s interval), one more while the test polls
    assert joined <= 4 and left <= 4 and rejoined <= 4, (joined, left, rejoined)
    checks = api(srv.http, "GET", "/v1/agent/checks").json()
    assert checks["service:web-1"]["Status"] == "passing"
    assert checks["service:web-1"]["Output"].startswith(f"HTTP GET {web.url}: 204")
    method, path, headers = web.requests[-1]
    assert (method, path) == ("GET", "/health") and headers["User-Agent"] == "meshdns health check"


def test_http_check_method_headers_and_body(srv, web):
    register(srv, "web-1", "127.0.0.11", {"HTTP": web.url, "Method": "POST", "Interval": f"{INTERVAL}s",
                                          "Header": {"X-Probe": ["meshdns"]}, "Body": "{\"check\":\"mem\"}"})
    wait_until(lambda: web.requests, 5)
    method, _, headers = web.requests[-1]
    assert method == "POST" and headers["X-Probe"] == "meshdns" and headers["Content-Length"] == "15"


def test_429_is_warning_kept_with_the_warning_weight(srv, web):
    other = FlipHttpServer(200)
    try:
        weights = {"Passing": 10, "Warning": 1}
        register(srv, "web-1", "127.0.0.11", {"HTTP": web.url, "Interval": f"{INTERVAL}s"}, weights)
        register(srv, "web-2", "127.0.0.12", {"HTTP": other.url, "Interval": f"{INTERVAL}s"}, weights)
        wait_until(lambda: len(addresses(srv, "web.service.consul")) == 2, WAIT)
        web.status = 429
        wait_until(lambda: api(srv.http, "GET", "/v1/agent/checks").json()["service:web-1"]["Status"] == "warning",
                   WAIT)
        srv_rrs = rrset_values(query(srv.dns_port, "web.service.consul", "SRV"))
        assert sorted(srv_rrs) == ["1 1 8080 7f00000b.addr.dc1.consul.", "1 10 8080 7f00000c.addr.dc1.consul."]
        assert addresses(srv, "web.service.consul") == ["127.0.0.11", "127.0.0.12"]
        assert [e["Service"]["ID"] for e in api(srv.http, "GET", "/v1/health/service/web?passing").json()] == \
            ["web-2"]
    finally:
        other.close()


def test_429_is_dropped_with_only_passing(start_server, tmp_path, web):
    (tmp_path / "zones").mkdir()
    srv = start_server({"dns": {"only_passing": True}}, zones=tmp_path / "zones")
    web.status = 429
    register(srv, "web-1", "127.0.0.11", {"HTTP": web.url, "Interval": f"{INTERVAL}s", "Status": "passing"})
    register(srv, "web-2", "127.0.0.12", {"TTL": "60s", "Status": "passing"})
    wait_until(lambda: addresses(srv, "web.service.consul") == ["127.0.0.12"], WAIT)


def test_tcp_check_follows_the_listener(srv):
    tcp = FlipTcpServer()
    try:
        register(srv, "web-1", "127.0.0.11", {"TCP": tcp.address, "Interval": f"{INTERVAL}s", "Timeout": "1s"})
        joined = probes_until(srv, lambda: addresses(srv, "web.service.consul") == ["127.0.0.11"])
        tcp.close()
        left = probes_until(srv, lambda: addresses(srv, "web.service.consul") == [])
        tcp.open()
        rejoined = probes_until(srv, lambda: addresses(srv, "web.service.consul") == ["127.0.0.11"])
        print(f"\ntcp check: joined after {joined}, left after {left}, rejoined after {rejoined} probes")
        # the probe under way at the flip, the next one, one more while the test polls
        assert joined <= 3 and left <= 3 and rejoined <= 3, (joined, left, rejoined)
    finally:
        tcp.close()


def test_thresholds_end_to_end(srv, web):
    """FailuresBeforeCritical=3: it leaves DNS only after three failed probes; SuccessBeforePassing=2: it
    comes back only after two good ones."""
    register(srv, "web-1", "127.0.0.11", {"HTTP": web.url, "Interval": "0.1s", "Status": "passing",
                                          "FailuresBeforeCritical": 3, "SuccessBeforePassing": 2})
    probes = lambda: srv.app.health.probes_run  # noqa: E731  (this server runs this one check only)
    web.status = 500
    start = probes()
    wait_until(lambda: addresses(srv, "web.service.consul") == [], WAIT, interval=0.005)
    assert probes() - start >= 3
    web.status = 200
    start = probes()
    wait_until(lambda: addresses(srv, "web.service.consul") == ["127.0.0.11"], WAIT, interval=0.005)
    assert probes() - start >= 2


def test_ttl_expiry(srv):
    register(srv, "web-1", "127.0.0.11", {"TTL": "0.5s", "Status": "passing"})
    assert addresses(srv, "web.service.consul") == ["127.0.0.11"]
    expired = time_until(lambda: addresses(srv, "web.service.consul") == [], WAIT)
    assert expired >= 0.3
    check = api(srv.http, "GET", "/v1/agent/checks").json()["service:web-1"]
    assert (check["Status"], check["Output"]) == ("critical", "TTL expired")
    api(srv.http, "PUT", "/v1/agent/check/pass/service:web-1")
    assert addresses(srv, "web.service.consul") == ["127.0.0.11"]


def test_deregister_critical_service_after(srv):
    tcp = FlipTcpServer()
    tcp.close()  # nothing listens: the check is critical
    try:
        register(srv, "web-1", "127.0.0.11", {"TCP": tcp.address, "Interval": f"{INTERVAL}s",
                                              "DeregisterCriticalServiceAfter": "0.5s"})
        register(srv, "web-2", "127.0.0.12", {"TTL": "60s", "Status": "passing"})
        gone = time_until(lambda: "web-1" not in api(srv.http, "GET", "/v1/agent/services").json(), WAIT)
        print(f"\nreaped {gone:.3f}s after registration (DeregisterCriticalServiceAfter 0.5s)")
        assert gone >= 0.4
        assert "service:web-1" not in api(srv.http, "GET", "/v1/agent/checks").json()
        assert list(api(srv.http, "GET", "/v1/agent/services").json()) == ["web-2"]
    finally:
        tcp.close()


def test_zone_file_checks_run_too(start_server, tmp_path, web):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "vm.toml").write_text(
        '[[service]]\nname = "legacy"\naddress = "127.0.0.21"\nport = 80\n'
        f'check = {{ http = "{web.url}", interval = "{INTERVAL}s" }}\n'
        '[[service]]\nname = "legacy"\naddress = "127.0.0.22"\nport = 80\n')
    srv = start_server(zones=zones)
    wait_until(lambda: addresses(srv, "legacy.service.consul") == ["127.0.0.21", "127.0.0.22"], WAIT)
    web.status = 503
    wait_until(lambda: addresses(srv, "legacy.service.consul") == ["127.0.0.22"], WAIT)
    entry = [e for e in api(srv.http, "GET", "/v1/health/service/legacy").json()
             if e["Service"]["Address"] == "127.0.0.21"][0]
    assert entry["Checks"][0]["Status"] == "critical" and entry["Checks"][0]["Type"] == "http"
    web.status = 200
    wait_until(lambda: addresses(srv, "legacy.service.consul") == ["127.0.0.21", "127.0.0.22"], WAIT)


def test_https_check_with_tls_skip_verify(srv, tmp_path):
    import shutil
    import subprocess
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    tls = FlipHttpServer(200, certfile=str(cert), keyfile=str(key))
    try:
        register(srv, "web-1", "127.0.0.11", {"HTTP": tls.url, "Interval": f"{INTERVAL}s"})
        register(srv, "web-2", "127.0.0.12", {"HTTP": tls.url, "Interval": f"{INTERVAL}s", "TLSSkipVerify": True})
        wait_until(lambda: addresses(srv, "web.service.consul") == ["127.0.0.12"], WAIT)
        wait_until(lambda: "certificate" in api(srv.http, "GET", "/v1/agent/checks").json()["service:web-1"]["Output"],
                   WAIT)
        checks = api(srv.http, "GET", "/v1/agent/checks").json()
        assert checks["service:web-1"]["Status"] == "critical" and checks["service:web-2"]["Status"] == "passing"
        assert checks["service:web-2"]["Definition"]["TLSSkipVerify"] is True
    finally:
        tls.close()
