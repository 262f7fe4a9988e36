"""Splits through the API (Consul's service-splitter), health-aware, durable, observable."""
import socket
import struct

import dns.message
import pytest

from harness import FlipHttpServer, ServerProcess, api, query, rrset_values, wait_until

LEGACY = ["10.1.0.1", "10.1.0.2"]
NEW = ["10.2.0.1"]


def register(base, ip, name, *, tags=(), check_url=None, interval="200ms"):
    body = {"Name": name, "ID": f"{name}-{ip}", "Address": ip, "Port": 8080, "Tags": list(tags)}
    if check_url:
        body["Check"] = {"HTTP": check_url, "Interval": interval, "Timeout": "1s", "Status": "passing"}
    reply = api(base, "PUT", "/v1/agent/service/register", body)
    assert reply.status == 200, reply


def splitter(legacy, new, name="billing"):
    return {"Kind": "service-splitter", "Name": name,
            "Splits": [{"Weight": legacy, "Service": "legacy-billing"},
                       {"Weight": new, "Service": "billing", "ServiceSubset": "v2"}]}


def answers(port, name="billing.service.consul", n=200):
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        base = dns.message.make_query(name, "A").to_wire()
        for start in range(0, n, 100):
            batch = min(100, n - start)
            for i in range(batch):
                s.sendto(struct.pack("!H", start + i) + base[2:], ("127.0.0.1", port))
            for _ in range(batch):
                msg = dns.message.from_wire(s.recv(4096))
                out.append(sorted(rd.to_text() for rrset in msg.answer for rd in rrset))
    return out


@pytest.fixture
def estate(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    srv = start_server(zones=zones)
    base = srv.http
    for ip in LEGACY:
        register(base, ip, "legacy-billing", tags=["v1"])
    register(base, NEW[0], "billing", tags=["v2"])
    return srv


def test_put_splitter_then_the_very_next_answer_follows(estate):
    base = estate.http
    assert api(base, "PUT", "/v1/config", splitter(100, 0)).status == 200
    assert all(a == LEGACY for a in answers(estate.dns_port, n=100))
    assert api(base, "PUT", "/v1/config", splitter(0, 100)).status == 200
    assert answers(estate.dns_port, n=1) == [NEW]         # the very next answer
    assert all(a == NEW for a in answers(estate.dns_port, n=100))


def test_get_reports_weights_source_and_effective_shares(estate):
    base = estate.http
    api(base, "PUT", "/v1/config", splitter(90, 10))
    entry = api(base, "GET", "/v1/config/service-splitter/billing")
    assert entry.status == 200
    body = entry.json()
    assert body["Kind"] == "service-splitter" and body["Name"] == "billing"
    assert body["Splits"] == [{"Weight": 90.0, "Service": "legacy-billing"},
                              {"Weight": 10.0, "Service": "billing", "ServiceSubset": "v2"}]
    assert body["Meta"]["meshdns-source"] == "config"
    assert body["HealthyTargets"] == ["legacy-billing", "billing:v2"]
    assert [(s["Service"], s["Share"]) for s in body["EffectiveShares"]] == [("legacy-billing", 0.9),
                                                                             ("billing", 0.1)]
    listing = api(base, "GET", "/v1/config/service-splitter").json()
    assert [e["Name"] for e in listing] == ["billing"]


@pytest.mark.parametrize("body,field", [
    (splitter(90, 20), "Splits"),                                              # sums to 110
    (splitter(90.005, 9.995), "Splits[0].Weight"),                             # finer than 0.01
    ({**splitter(90, 10), "Splits": [{"Weight": 90, "Service": "legacy-billing"},
                                     {"Weight": 10, "Service": "nobody"}]}, "Splits[1].Service"),
    ({"Kind": "service-router", "Name": "billing", "Routes": []}, "Routes"),
    ({"Kind": "service-splitter", "Name": "Not A Label", "Splits": []}, "Splits"),
    ({"Kind": "service-splitter", "Name": "billing", "Splits": [{"Weight": 100, "Service": "legacy-billing",
                                                                 "Colour": "red"}]}, "Splits[0].Colour"),
])
def test_invalid_splitter_is_400_naming_the_field_and_the_old_split_stays(estate, body, field):
    base = estate.http
    api(base, "PUT", "/v1/config", splitter(100, 0))
    reply = api(base, "PUT", "/v1/config", body)
    assert reply.status == 400 and field in reply.text, reply
    assert all(a == LEGACY for a in answers(estate.dns_port, n=50))
    assert api(base, "GET", "/v1/config/service-splitter/billing").json()["Splits"][0]["Weight"] == 100.0


def test_a_split_may_not_target_another_split(estate):
    base = estate.http
    api(base, "PUT", "/v1/config", splitter(50, 50))
    loop = {"Kind": "service-splitter", "Name": "front", "Splits": [{"Weight": 100, "Service": "billing"}]}
    reply = api(base, "PUT", "/v1/config", loop)
    assert reply.status == 400 and "itself a split" in reply.text
    assert api(base, "GET", "/v1/config/service-splitter/front").status == 404


def test_delete_returns_to_the_plain_service(estate):
    base = estate.http
    api(base, "PUT", "/v1/config", splitter(100, 0))
    assert api(base, "DELETE", "/v1/config/service-splitter/billing").status == 200
    assert all(a == NEW for a in answers(estate.dns_port, n=20))    # plain billing.service again
    assert api(base, "DELETE", "/v1/config/service-splitter/billing").status == 404


def test_answers_by_target_counter(estate):
    base = estate.http
    api(base, "PUT", "/v1/config", splitter(50, 50))
    got = answers(estate.dns_port, n=400)
    legacy = sum(a == LEGACY for a in got)
    metrics = api(base, "GET", "/metrics").text
    assert f'meshdns_split_answers_total{{split="billing",target="legacy-billing"}} {float(legacy)}' in metrics
    assert f'meshdns_split_answers_total{{split="billing",target="billing:v2"}} {float(400 - legacy)}' in metrics


def test_one_side_failing_its_http_check_moves_all_traffic_then_back(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    srv = start_server(zones=zones)
    checks = [FlipHttpServer(200) for _ in LEGACY]
    try:
        for ip, check in zip(LEGACY, checks):
            register(srv.http, ip, "legacy-billing", check_url=check.url)
        register(srv.http, NEW[0], "billing", tags=["v2"])
        api(srv.http, "PUT", "/v1/config", splitter(90, 10))
        assert any(a == LEGACY for a in answers(srv.dns_port, n=50))
        for check in checks:
            check.status = 500
        wait_until(lambda: all(a == NEW for a in answers(srv.dns_port, n=50)), timeout=3)
        shares = api(srv.http, "GET", "/v1/config/service-splitter/billing").json()["EffectiveShares"]
        assert [(s["Service"], s["Share"]) for s in shares] == [("billing", 1.0)]
        for check in checks:
            check.status = 200
        wait_until(lambda: sum(a == LEGACY for a in answers(srv.dns_port, n=200)) > 150, timeout=3)
    finally:
        for check in checks:
            check.close()


def test_all_sides_down_nxdomain_then_fail_open(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "s.toml").write_text('''
[[split]]
name = "open"
on_all_unhealthy = "all"
targets = [ { service = "legacy-billing", weight = 50 }, { service = "billing", tag = "v2", weight = 50 } ]
''')
    srv = start_server(zones=zones)
    check = FlipHttpServer(500)
    try:
        body = {"Name": "legacy-billing", "ID": "lb", "Address": "10.1.0.1", "Port": 80,
                "Check": {"HTTP": check.url, "Interval": "200ms"}}
        assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 200
        body = {"Name": "billing", "ID": "b2", "Address": "10.2.0.1", "Port": 80, "Tags": ["v2"],
                "Check": {"HTTP": check.url, "Interval": "200ms"}}
        assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 200
        api(srv.http, "PUT", "/v1/config", {"Kind": "service-splitter", "Name": "closed", "Splits": [
            {"Weight": 50, "Service": "legacy-billing"}, {"Weight": 50, "Service": "billing", "ServiceSubset": "v2"}]})
        assert query(srv.dns_port, "closed.service.consul").rcode() == 3      # NXDOMAIN: nothing healthy
        got = {tuple(a) for a in answers(srv.dns_port, "open.service.consul", n=100)}
        assert got == {("10.1.0.1",), ("10.2.0.1",)}                          # fail open: every instance
    finally:
        check.close()


def test_api_split_survives_kill_9(tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    args = ("--zones", str(zones), "--data-dir", str(tmp_path / "data"))
    proc = ServerProcess(*args).start()
    try:
        for ip in LEGACY:
            register(proc.http, ip, "legacy-billing")
        register(proc.http, NEW[0], "billing", tags=["v2"])
        assert api(proc.http, "PUT", "/v1/config", splitter(0, 100)).status == 200
    finally:
        proc.kill()
    proc = ServerProcess(*args).start()
    try:
        assert all(a == NEW for a in answers(proc.dns_port, n=50))
        assert api(proc.http, "GET", "/v1/config/service-splitter/billing").json()["Splits"][1]["Weight"] == 100
    finally:
        proc.stop()


def test_last_write_wins_between_zone_file_and_api(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "s.toml").write_text('[[split]]\nname = "billing"\ntargets = [ { service = "legacy-billing", '
                                  'weight = 1 } ]\n')
    srv = start_server(zones=zones)
    for ip in LEGACY:
        register(srv.http, ip, "legacy-billing")
    register(srv.http, NEW[0], "billing", tags=["v2"])
    assert api(srv.http, "GET", "/v1/config/service-splitter/billing").json()["Meta"]["meshdns-source"] == "zones"
    api(srv.http, "PUT", "/v1/config", splitter(0, 100))
    assert api(srv.http, "GET", "/v1/config/service-splitter/billing").json()["Meta"]["meshdns-source"] == "config"
    assert rrset_values(query(srv.dns_port, "billing.service.consul")) == NEW


def _served(port, name, n=200):
    """What DNS serves for a split name: {answer (sorted addresses): how many times}."""
    counts = {}
    for a in answers(port, name, n=n):
        counts[tuple(a)] = counts.get(tuple(a), 0) + 1
    return counts


@pytest.mark.parametrize("case", ["maintenance_and_warning_with_only_passing", "fail_open"])
def test_effective_shares_are_what_dns_serves(start_server, tmp_path, case):
    """The API's EffectiveShares and the DNS answers come from one function: they agree in every case."""
    zones = tmp_path / "zones"
    zones.mkdir()
    fail_open = case == "fail_open"
    (zones / "s.toml").write_text(f'''
[[split]]
name = "front"
on_all_unhealthy = "{'all' if fail_open else 'nxdomain'}"
targets = [ {{ service = "legacy-billing", weight = 50 }}, {{ service = "billing", tag = "v2", weight = 50 }} ]
''')
    srv = start_server({"dns": {"only_passing": not fail_open}}, zones=zones)
    down = "critical" if fail_open else "passing"

    def reg(ip, name, status, tags=()):
        body = {"Name": name, "ID": f"{name}-{ip}", "Address": ip, "Port": 80, "Tags": list(tags),
                "Check": {"TTL": "10m", "Status": status}}
        assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 200

    reg("10.1.0.1", "legacy-billing", down)
    reg("10.1.0.2", "legacy-billing", down)
    assert api(srv.http, "PUT", "/v1/agent/service/maintenance/legacy-billing-10.1.0.2?enable=true").status == 200
    reg("10.2.0.1", "billing", "critical" if fail_open else "warning", tags=["v2"])
    reg("10.2.0.2", "billing", "critical", tags=["v1"])            # billing, but not the target's tag
    if fail_open:
        assert api(srv.http, "PUT", "/v1/agent/service/maintenance/legacy-billing-10.1.0.1?enable=true").status == 200
        expected_dns = {("10.2.0.1",): 200}
        expected_shares = [("billing", "v2", 1.0)]
    else:
        expected_dns = {("10.1.0.1",): 200}                       # maintenance hidden, warning not passing
        expected_shares = [("legacy-billing", None, 1.0)]
    served = _served(srv.dns_port, "front.service.consul")
    entry = api(srv.http, "GET", "/v1/config/service-splitter/front").json()
    assert served == expected_dns
    assert [(s["Service"], s.get("ServiceSubset"), s["Share"]) for s in entry["EffectiveShares"]] == expected_shares
    # failing open serves instances that are not healthy, and says so
    assert entry["HealthyTargets"] == ([] if fail_open else ["legacy-billing"])
