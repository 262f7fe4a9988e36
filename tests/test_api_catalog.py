"""Catalog endpoints: external nodes registered the consul-esm way, and the merged catalog views."""
import dns.rcode
import pytest

from harness import api, dig, query, rrset_values

# Consul docs, "Register Entity" sample payload (addresses moved to documentation-only ranges we never contact)
FOOBAR = {
    "Datacenter": "dc1",
    "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
    "Node": "foobar",
    "Address": "192.168.10.10",
    "TaggedAddresses": {"lan": "192.168.10.10", "wan": "10.0.10.10"},
    "NodeMeta": {"somekey": "somevalue"},
    "Service": {
        "ID": "redis1",
        "Service": "redis",
        "Tags": ["primary", "v1"],
        "Address": "127.0.0.1",
        "TaggedAddresses": {"lan": {"address": "127.0.0.1", "port": 8000},
                            "wan": {"address": "198.18.0.1", "port": 80}},
        "Meta": {"redis_version": "4.0"},
        "Port": 8000,
        "Namespace": "default",
    },
    "Check": {
        "Node": "foobar",
        "CheckID": "service:redis1",
        "Name": "Redis health check",
        "Notes": "Script based health check",
        "Status": "passing",
        "ServiceID": "redis1",
        "Definition": {"TCP": "localhost:8888", "Interval": "5s", "Timeout": "1s",
                       "DeregisterCriticalServiceAfter": "30s"},
        "Namespace": "default",
    },
    "SkipNodeUpdate": False,
}


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server(zones=tmp_path / "zones")


def test_register_external_node(srv):
    r = api(srv.http, "PUT", "/v1/catalog/register", FOOBAR)
    assert r.status == 200 and r.json() is True
    nodes = api(srv.http, "GET", "/v1/catalog/nodes").json()
    foobar = [n for n in nodes if n["Node"] == "foobar"][0]
    assert foobar["Address"] == "192.168.10.10" and foobar["Meta"] == {"somekey": "somevalue"}
    assert foobar["TaggedAddresses"] == {"lan": "192.168.10.10", "wan": "10.0.10.10"}
    node = api(srv.http, "GET", "/v1/catalog/node/foobar").json()
    assert node["Node"]["Node"] == "foobar" and list(node["Services"]) == ["redis1"]
    assert node["Services"]["redis1"]["Service"] == "redis"

    svc = api(srv.http, "GET", "/v1/catalog/service/redis?tag=primary").json()
    assert [(e["Node"], e["Address"], e["ServiceAddress"], e["ServicePort"]) for e in svc] == \
        [("foobar", "192.168.10.10", "127.0.0.1", 8000)]
    assert svc[0]["ServiceTaggedAddresses"]["wan"]["port"] == 80
    assert api(srv.http, "GET", "/v1/catalog/service/redis?tag=nope").json() == []

    health = api(srv.http, "GET", "/v1/health/service/redis?passing").json()
    assert len(health) == 1
    check = health[0]["Checks"][0]
    assert (check["CheckID"], check["Status"], check["Notes"]) == ("service:redis1", "passing",
                                                                   "Script based health check")
    assert check["Definition"]["TCP"] == "localhost:8888"

    # DNS: the service and the node
    assert rrset_values(query(srv.dns_port, "redis.service.consul")) == ["127.0.0.1"]
    assert dig(srv.dns_port, "foobar.node.consul", "A", "+short").split() == ["192.168.10.10"]
    assert "somekey=somevalue" in dig(srv.dns_port, "foobar.node.consul", "TXT", "+short")


def test_pushed_status_changes_dns(srv):
    api(srv.http, "PUT", "/v1/catalog/register", FOOBAR)
    failing = dict(FOOBAR, Check=dict(FOOBAR["Check"], Status="critical", Output="dial tcp: refused"),
                   SkipNodeUpdate=True)
    assert api(srv.http, "PUT", "/v1/catalog/register", failing).status == 200
    assert query(srv.dns_port, "redis.service.consul").rcode() == dns.rcode.NXDOMAIN
    assert api(srv.http, "GET", "/v1/health/service/redis?passing").json() == []
    assert len(api(srv.http, "GET", "/v1/health/service/redis").json()) == 1
    assert [c["Output"] for c in api(srv.http, "GET", "/v1/health/state/critical").json()] == ["dial tcp: refused"]
    warning = dict(failing, Check=dict(FOOBAR["Check"], Status="warning"))
    api(srv.http, "PUT", "/v1/catalog/register", warning)
    assert rrset_values(query(srv.dns_port, "redis.service.consul")) == ["127.0.0.1"]


def test_service_without_address_uses_the_node_address(srv):
    body = {"Node": "esm-target", "Address": "192.168.10.20",
            "Service": {"Service": "legacy-ftp", "Port": 21}}
    assert api(srv.http, "PUT", "/v1/catalog/register", body).status == 200
    assert rrset_values(query(srv.dns_port, "legacy-ftp.service.consul")) == ["192.168.10.20"]
    srv_rr = rrset_values(query(srv.dns_port, "legacy-ftp.service.consul", "SRV"))
    assert srv_rr == ["1 1 21 esm-target.node.dc1.consul."]  # no address of its own: the node, as Consul
    # moving the node moves the service
    api(srv.http, "PUT", "/v1/catalog/register", {"Node": "esm-target", "Address": "192.168.10.21"})
    assert rrset_values(query(srv.dns_port, "legacy-ftp.service.consul")) == ["192.168.10.21"]


def test_node_check_marks_every_service_on_the_node(srv):
    api(srv.http, "PUT", "/v1/catalog/register", FOOBAR)
    node_down = {"Node": "foobar", "Address": "192.168.10.10", "SkipNodeUpdate": True,
                 "Check": {"CheckID": "externalNodeHealth", "Name": "External Node Status", "Status": "critical"}}
    assert api(srv.http, "PUT", "/v1/catalog/register", node_down).status == 200
    assert query(srv.dns_port, "redis.service.consul").rcode() == dns.rcode.NXDOMAIN
    checks = api(srv.http, "GET", "/v1/health/service/redis").json()[0]["Checks"]
    assert [c["CheckID"] for c in checks] == ["externalNodeHealth", "service:redis1"]
    assert [c["CheckID"] for c in api(srv.http, "GET", "/v1/health/node/foobar").json()] == \
        ["externalNodeHealth", "service:redis1"]


def test_deregister_check_service_and_node(srv):
    api(srv.http, "PUT", "/v1/catalog/register", FOOBAR)
    two = dict(FOOBAR, Service=dict(FOOBAR["Service"], ID="redis2", Port=8001),
               Check=dict(FOOBAR["Check"], CheckID="service:redis2", ServiceID="redis2"))
    api(srv.http, "PUT", "/v1/catalog/register", two)
    assert len(api(srv.http, "GET", "/v1/catalog/service/redis").json()) == 2
    # Consul docs deregister payloads
    r = api(srv.http, "PUT", "/v1/catalog/deregister",
            {"Datacenter": "dc1", "Node": "foobar", "CheckID": "service:redis1"})
    assert r.status == 200 and r.json() is True
    assert [c["CheckID"] for c in api(srv.http, "GET", "/v1/health/checks/redis").json()] == ["service:redis2"]
    r = api(srv.http, "PUT", "/v1/catalog/deregister", {"Datacenter": "dc1", "Node": "foobar", "ServiceID": "redis1"})
    assert r.status == 200
    assert [e["ServiceID"] for e in api(srv.http, "GET", "/v1/catalog/service/redis").json()] == ["redis2"]
    r = api(srv.http, "PUT", "/v1/catalog/deregister", {"Datacenter": "dc1", "Node": "foobar"})
    assert r.status == 200
    assert api(srv.http, "GET", "/v1/catalog/service/redis").json() == []
    assert api(srv.http, "GET", "/v1/catalog/node/foobar").json() is None
    assert query(srv.dns_port, "foobar.node.consul").rcode() == dns.rcode.NXDOMAIN


def test_deregister_of_what_is_already_gone_is_200(srv):
    """As Consul: consul-esm and friends deregister idempotently."""
    api(srv.http, "PUT", "/v1/catalog/register", FOOBAR)
    for body in ({"Node": "foobar", "CheckID": "nope"}, {"Node": "foobar", "ServiceID": "nope"},
                 {"Node": "nope"}, {"Node": "nope", "ServiceID": "redis1"}):
        r = api(srv.http, "PUT", "/v1/catalog/deregister", body)
        assert r.status == 200 and r.json() is True, body
    assert [e["ServiceID"] for e in api(srv.http, "GET", "/v1/catalog/service/redis").json()] == ["redis1"]
    for _ in range(2):
        r = api(srv.http, "PUT", "/v1/catalog/deregister", {"Node": "foobar"})
        assert r.status == 200 and r.json() is True
    assert api(srv.http, "GET", "/v1/catalog/node/foobar").json() is None


def test_catalog_merges_sources(start_server, tmp_path):
    """The catalog endpoints show every source: zone files and registrations under one name."""
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "vm.toml").write_text('[[service]]\nname = "billing"\naddress = "192.168.28.213"\nport = 8080\n'
                                   'tags = ["legacy"]\n')
    srv = start_server(zones=zones)
    api(srv.http, "PUT", "/v1/agent/service/register", {"ID": "billing-v2", "Name": "billing",
                                                        "Address": "127.0.0.9", "Port": 8080, "Tags": ["v2"]})
    assert api(srv.http, "GET", "/v1/catalog/services").json() == {"billing": ["legacy", "v2"]}
    entries = api(srv.http, "GET", "/v1/health/service/billing").json()
    assert sorted(e["Service"]["ID"] for e in entries) == ["billing-192.168.28.213", "billing-v2"]
    assert sorted(rrset_values(query(srv.dns_port, "billing.service.consul"))) == ["127.0.0.9", "192.168.28.213"]
    assert [e["Service"]["ID"] for e in api(srv.http, "GET", "/v1/health/service/billing?tag=v2").json()] == \
        ["billing-v2"]


def test_catalog_may_not_touch_the_agent_node(srv):
    agent = api(srv.http, "GET", "/v1/catalog/nodes").json()[0]["Node"]
    r = api(srv.http, "PUT", "/v1/catalog/register", {"Node": agent, "Address": "192.168.1.1"})
    assert r.status == 400 and "Node" in r.text
