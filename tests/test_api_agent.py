"""Agent endpoints with bodies from Consul's API documentation; read back through the API and DNS."""
import dns.rcode
import pytest

from harness import api, dig, query, rrset_values

# Consul docs, "Register Service" sample payload (its Check uses a script, which meshdns does not run:
# see test_doc_payload_with_script_check_is_refused; here it is an HTTP check).
REDIS1 = {
    "ID": "redis1",
    "Name": "redis",
    "Tags": ["primary", "v1"],
    "Address": "127.0.0.1",
    "Port": 8000,
    "Meta": {"redis_version": "4.0"},
    "EnableTagOverride": False,
    "Weights": {"Passing": 10, "Warning": 1},
}


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server(zones=tmp_path / "zones")


def test_register_read_back_and_resolve(srv):
    r = api(srv.http, "PUT", "/v1/agent/service/register", REDIS1)
    assert r.status == 200, r.text
    services = api(srv.http, "GET", "/v1/agent/services")
    assert services.status == 200 and services.index >= 1
    got = services.json()["redis1"]
    assert got["ID"] == "redis1" and got["Service"] == "redis"
    assert got["Tags"] == ["primary", "v1"] and got["Port"] == 8000 and got["Address"] == "127.0.0.1"
    assert got["Meta"] == {"redis_version": "4.0"} and got["Weights"] == {"Passing": 10, "Warning": 1}
    assert api(srv.http, "GET", "/v1/agent/service/redis1").json()["Service"] == "redis"

    msg = query(srv.dns_port, "redis.service.consul", "SRV")
    assert rrset_values(msg) == ["1 10 8000 7f000001.addr.dc1.consul."]
    assert "127.0.0.1" in rrset_values(msg, "additional")
    out = dig(srv.dns_port, "primary.redis.service.consul", "A", "+short")
    assert out.split() == ["127.0.0.1"]

    cat = api(srv.http, "GET", "/v1/catalog/service/redis").json()
    assert [(e["ServiceID"], e["ServiceAddress"], e["ServicePort"], e["ServiceWeights"]) for e in cat] == \
        [("redis1", "127.0.0.1", 8000, {"Passing": 10, "Warning": 1})]
    assert api(srv.http, "GET", "/v1/catalog/services").json() == {"redis": ["primary", "v1"]}


def test_deregister(srv):
    api(srv.http, "PUT", "/v1/agent/service/register", REDIS1)
    assert api(srv.http, "PUT", "/v1/agent/service/deregister/redis1").status == 200
    assert api(srv.http, "GET", "/v1/agent/services").json() == {}
    assert query(srv.dns_port, "redis.service.consul").rcode() == dns.rcode.NXDOMAIN
    again = api(srv.http, "PUT", "/v1/agent/service/deregister/redis1")
    assert again.status == 404 and "redis1" in again.text


def test_snake_case_keys_are_accepted(srv):
    body = {"id": "web-1", "name": "web", "tags": ["a"], "address": "127.0.0.2", "port": 80,
            "enable_tag_override": True, "weights": {"passing": 3, "warning": 1},
            "check": {"tcp": "127.0.0.1:1", "interval": "10s", "status": "passing"}}
    assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 200
    got = api(srv.http, "GET", "/v1/agent/services").json()["web-1"]
    assert got["EnableTagOverride"] is True and got["Weights"] == {"Passing": 3, "Warning": 1}
    checks = api(srv.http, "GET", "/v1/agent/checks").json()
    assert checks["service:web-1"]["Type"] == "tcp" and checks["service:web-1"]["ServiceID"] == "web-1"


def test_consul_services_register_file_shape_is_unwrapped(srv):
    assert api(srv.http, "PUT", "/v1/agent/service/register", {"Service": REDIS1}).status == 200
    assert "redis1" in api(srv.http, "GET", "/v1/agent/services").json()


def test_defaults_address_and_id_come_from_the_caller(srv):
    assert api(srv.http, "PUT", "/v1/agent/service/register", {"Name": "billing", "Port": 9000}).status == 200
    got = api(srv.http, "GET", "/v1/agent/services").json()
    assert list(got) == ["billing-127.0.0.1"] and got["billing-127.0.0.1"]["Address"] == "127.0.0.1"
    assert rrset_values(query(srv.dns_port, "billing.service.consul")) == ["127.0.0.1"]


def test_doc_payload_with_script_check_is_refused(srv):
    body = dict(REDIS1, Check={"DeregisterCriticalServiceAfter": "90m", "Args": ["/usr/local/bin/check_redis.py"],
                               "Interval": "10s", "Timeout": "5s"})
    r = api(srv.http, "PUT", "/v1/agent/service/register", body)
    assert r.status == 400 and "Check.Args" in r.text
    assert api(srv.http, "GET", "/v1/agent/services").json() == {}


def test_maintenance_hides_the_instance(srv):
    api(srv.http, "PUT", "/v1/agent/service/register", REDIS1)
    r = api(srv.http, "PUT", "/v1/agent/service/maintenance/redis1?enable=true&reason=For+the+docs")
    assert r.status == 200, r.text
    assert query(srv.dns_port, "redis.service.consul").rcode() == dns.rcode.NXDOMAIN
    entry = api(srv.http, "GET", "/v1/health/service/redis").json()[0]
    maint = [c for c in entry["Checks"] if c["CheckID"] == "_service_maintenance:redis1"]
    assert maint and maint[0]["Status"] == "critical" and maint[0]["Notes"] == "For the docs"
    assert api(srv.http, "GET", "/v1/health/service/redis?passing").json() == []
    # re-registering (a boot script running again) keeps maintenance mode
    api(srv.http, "PUT", "/v1/agent/service/register", REDIS1)
    assert query(srv.dns_port, "redis.service.consul").rcode() == dns.rcode.NXDOMAIN
    assert api(srv.http, "PUT", "/v1/agent/service/maintenance/redis1?enable=false").status == 200
    assert rrset_values(query(srv.dns_port, "redis.service.consul")) == ["127.0.0.1"]
    assert api(srv.http, "PUT", "/v1/agent/service/maintenance/redis1").status == 400
    assert api(srv.http, "PUT", "/v1/agent/service/maintenance/nope?enable=true").status == 404


def test_ttl_check_register_pass_warn_fail_update(srv):
    api(srv.http, "PUT", "/v1/agent/service/register", REDIS1)
    # Consul docs "Register Check" shape, as a TTL check bound to the service
    check = {"ID": "mem", "Name": "Memory utilization", "Notes": "Ensure we don't oversubscribe memory",
             "DeregisterCriticalServiceAfter": "90m", "TTL": "30s", "ServiceID": "redis1"}
    assert api(srv.http, "PUT", "/v1/agent/check/register", check).status == 200
    # a new check starts critical: the instance leaves DNS
    assert query(srv.dns_port, "redis.service.consul").rcode() == dns.rcode.NXDOMAIN
    assert api(srv.http, "PUT", "/v1/agent/check/pass/mem?note=all+good").status == 200
    assert rrset_values(query(srv.dns_port, "redis.service.consul", "SRV")) == ["1 10 8000 7f000001.addr.dc1.consul."]
    got = api(srv.http, "GET", "/v1/agent/checks").json()["mem"]
    assert (got["Status"], got["Output"], got["ServiceID"], got["Type"]) == ("passing", "all good", "redis1", "ttl")

    assert api(srv.http, "PUT", "/v1/agent/check/warn/mem").status == 200
    # warning: still answered, with Weights.Warning
    assert rrset_values(query(srv.dns_port, "redis.service.consul", "SRV")) == ["1 1 8000 7f000001.addr.dc1.consul."]

    update = {"Status": "critical", "Output": "curl reported a failure:\n\nconnection refused"}
    assert api(srv.http, "PUT", "/v1/agent/check/update/mem", update).status == 200
    assert query(srv.dns_port, "redis.service.consul").rcode() == dns.rcode.NXDOMAIN
    assert api(srv.http, "GET", "/v1/health/checks/redis").json()[0]["Output"].startswith("curl reported")
    assert [c["CheckID"] for c in api(srv.http, "GET", "/v1/health/state/critical").json()] == ["mem"]

    assert api(srv.http, "PUT", "/v1/agent/check/fail/nope").status == 404
    bad = api(srv.http, "PUT", "/v1/agent/check/update/mem", {"Status": "sideways"})
    assert bad.status == 400 and "Status" in bad.text
    assert api(srv.http, "PUT", "/v1/agent/check/deregister/mem").status == 200
    assert rrset_values(query(srv.dns_port, "redis.service.consul")) == ["127.0.0.1"]
    assert api(srv.http, "PUT", "/v1/agent/check/deregister/mem").status == 404


def test_a_check_without_an_id_takes_its_name_spaces_included(srv):
    """Consul's "Register Check" doc payload without its ID: the ID is the Name."""
    api(srv.http, "PUT", "/v1/agent/service/register", REDIS1)
    check = {"Name": "Memory utilization", "Notes": "Ensure we don't oversubscribe memory", "TTL": "30s",
             "ServiceID": "redis1"}
    reply = api(srv.http, "PUT", "/v1/agent/check/register", check)
    assert reply.status == 200, reply
    assert list(api(srv.http, "GET", "/v1/agent/checks").json()) == ["Memory utilization"]
    assert api(srv.http, "PUT", "/v1/agent/check/pass/Memory%20utilization").status == 200
    checks = api(srv.http, "GET", "/v1/health/checks/redis").json()
    assert [(c["CheckID"], c["Status"]) for c in checks] == [("Memory utilization", "passing")]
    assert rrset_values(query(srv.dns_port, "redis.service.consul")) == ["127.0.0.1"]
    assert api(srv.http, "PUT", "/v1/agent/check/deregister/Memory%20utilization").status == 200
    assert api(srv.http, "GET", "/v1/agent/checks").json() == {}


def test_pass_on_a_non_ttl_check_is_refused(srv):
    body = dict(REDIS1, Check={"TCP": "127.0.0.1:1", "Interval": "10s"})
    api(srv.http, "PUT", "/v1/agent/service/register", body)
    r = api(srv.http, "PUT", "/v1/agent/check/pass/service:redis1")
    assert r.status == 400 and "TTL" in r.text


def test_node_check_affects_every_agent_service(srv):
    api(srv.http, "PUT", "/v1/agent/service/register", REDIS1)
    api(srv.http, "PUT", "/v1/agent/service/register", {"ID": "web1", "Name": "web", "Address": "127.0.0.3"})
    assert api(srv.http, "PUT", "/v1/agent/check/register", {"Name": "disk", "TTL": "60s"}).status == 200
    for name in ("redis", "web"):
        assert query(srv.dns_port, f"{name}.service.consul").rcode() == dns.rcode.NXDOMAIN
    api(srv.http, "PUT", "/v1/agent/check/pass/disk")
    assert rrset_values(query(srv.dns_port, "web.service.consul")) == ["127.0.0.3"]
    entry = api(srv.http, "GET", "/v1/health/service/web").json()[0]
    assert [c["CheckID"] for c in entry["Checks"]] == ["disk"]


def test_replace_existing_checks(srv):
    body = dict(REDIS1, Checks=[{"TTL": "60s", "Status": "passing"}, {"TTL": "60s", "Status": "passing"}])
    api(srv.http, "PUT", "/v1/agent/service/register", body)
    assert sorted(api(srv.http, "GET", "/v1/agent/checks").json()) == ["service:redis1:1", "service:redis1:2"]
    # without the flag, checks not in the new definition are kept (Consul)
    api(srv.http, "PUT", "/v1/agent/service/register", dict(REDIS1, Check={"CheckID": "c", "TTL": "9s",
                                                                           "Status": "passing"}))
    assert sorted(api(srv.http, "GET", "/v1/agent/checks").json()) == ["c", "service:redis1:1", "service:redis1:2"]
    api(srv.http, "PUT", "/v1/agent/service/register?replace-existing-checks",
        dict(REDIS1, Check={"CheckID": "c", "TTL": "9s", "Status": "passing"}))
    assert sorted(api(srv.http, "GET", "/v1/agent/checks").json()) == ["c"]
    # deregistering the service removes its checks
    api(srv.http, "PUT", "/v1/agent/service/deregister/redis1")
    assert api(srv.http, "GET", "/v1/agent/checks").json() == {}


def test_reads_carry_an_index(srv):
    for path in ("/v1/agent/services", "/v1/agent/checks", "/v1/catalog/services", "/v1/catalog/nodes",
                 "/v1/catalog/datacenters", "/v1/catalog/service/x", "/v1/health/service/x",
                 "/v1/health/checks/x", "/v1/health/state/any"):
        r = api(srv.http, "GET", path)
        assert r.status == 200 and r.index >= 1, path
    assert api(srv.http, "GET", "/v1/catalog/datacenters").json() == ["dc1"]


def test_healthz_and_readyz(srv):
    assert api(srv.http, "GET", "/healthz").status == 200
    ready = api(srv.http, "GET", "/readyz")
    assert ready.status == 200
    assert ready.json()["sources"]["registrations"] == {"synced": True, "errors": {}}
    assert ready.json()["sources"]["zones"]["synced"] is True


def test_readyz_lists_zone_file_errors(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "bad.toml").write_text("[[service]]\nname = 'x'\nport = 99999\naddress = '10.0.0.1'\n")
    srv = start_server(zones=zones)
    body = api(srv.http, "GET", "/readyz").json()
    errors = body["sources"]["zones"]["errors"]
    assert len(errors) == 1 and "bad.toml:1" in next(iter(errors.values()))


def test_check_output_is_kept_up_to_health_output_max_size(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    srv = start_server({"health": {"output_max_size": 10}}, zones=tmp_path / "zones")
    assert api(srv.http, "PUT", "/v1/agent/check/register", {"ID": "mem", "Name": "mem", "TTL": "30s"}).status == 200
    for status in ("passing", "critical"):   # a heartbeat (same status) and a change (written to disk)
        update = {"Status": status, "Output": "0123456789abcdefghij"}
        assert api(srv.http, "PUT", "/v1/agent/check/update/mem", update).status == 200
        assert api(srv.http, "GET", "/v1/agent/checks").json()["mem"]["Output"] == "0123456789"
    assert srv.app.db.load("check-status") != {}
    assert {r["Output"] for r in srv.app.db.load("check-status").values()} == {"0123456789"}
