"""?filter= on every list endpoint Consul filters, against a real server, with the entries of Consul's docs."""
import re
import threading
from urllib.parse import quote

import pytest

from harness import ROOT, api


def get(srv, path, expression=None, **kwargs):
    if expression is not None:
        path += ("&" if "?" in path else "?") + "filter=" + quote(expression)
    return api(srv.http, "GET", path, **kwargs)


def ok(srv, path, expression=None):
    reply = get(srv, path, expression)
    assert reply.status == 200, reply
    return reply.json()


AGENT = [  # Consul docs, Filtering > Agent API
    {"ID": "redis1", "Name": "redis", "Tags": ["primary", "production"], "Meta": {"env": "production", "foo": "bar"},
     "Port": 1234, "Address": "127.0.0.1"},
    {"ID": "redis2", "Name": "redis", "Tags": ["secondary", "production"], "Meta": {"env": "production", "foo": "bar"},
     "Port": 1235, "Address": "127.0.0.1"},
    {"ID": "redis3", "Name": "redis", "Tags": ["primary", "qa"], "Meta": {"env": "qa"}, "Port": 1234,
     "Address": "127.0.0.1", "Check": {"TTL": "60s", "Name": "redis3 alive", "Status": "warning"}},
]
CATALOG = [  # Consul docs, Filtering > Catalog API
    ("node-1", "198.18.0.1", {"agent": "true", "arch": "i386", "os": "darwin"}, ["tag"], "qa", "passing"),
    ("node-2", "198.18.0.2", {"arch": "arm", "os": "linux"}, ["test", "tag"], "production", "critical"),
    ("node-4", "198.18.0.4", {"arch": "i386", "os": "freebsd"}, [], "qa", "passing"),
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from harness import ServerThread, make_config
    tmp = tmp_path_factory.mktemp("filter")
    (tmp / "zones").mkdir()
    server = ServerThread(make_config(tmp, zones=tmp / "zones")).start()
    for body in AGENT:
        assert api(server.http, "PUT", "/v1/agent/service/register", body).status == 200
    for name, address, meta, tags, env, status in CATALOG:
        body = {"Node": name, "Address": address, "NodeMeta": meta,
                "Service": {"ID": "api-internal", "Service": "api-internal", "Tags": tags, "Port": 9090,
                            "Meta": {"environment": env}},
                "Checks": [{"CheckID": "service:api-internal", "Name": "api", "ServiceID": "api-internal",
                            "Status": status},
                           {"CheckID": "node-health", "Name": "Node level check", "Status": "passing"}]}
        assert api(server.http, "PUT", "/v1/catalog/register", body).status == 200
    yield server
    server.stop()


def test_agent_services(srv):
    assert sorted(ok(srv, "/v1/agent/services")) == ["redis1", "redis2", "redis3"]
    assert list(ok(srv, "/v1/agent/services", 'Meta.env == "qa"')) == ["redis3"]
    assert sorted(ok(srv, "/v1/agent/services", '"primary" in Tags and Port == 1234')) == ["redis1", "redis3"]


def test_agent_checks(srv):
    assert list(ok(srv, "/v1/agent/checks")) == ["service:redis3"]
    assert ok(srv, "/v1/agent/checks", "Status == passing") == {}
    assert list(ok(srv, "/v1/agent/checks", 'Status == warning and Name matches "alive$"')) == ["service:redis3"]


def test_catalog_services(srv):
    assert ok(srv, "/v1/catalog/services") == {"api-internal": ["tag", "test"], "redis": [
        "primary", "production", "qa", "secondary"]}
    assert ok(srv, "/v1/catalog/services", 'NodeMeta.os == "linux"') == {"api-internal": ["tag", "test"]}
    assert ok(srv, "/v1/catalog/services", '"qa" in ServiceTags or ServiceMeta.environment == qa') == {
        "api-internal": ["tag"], "redis": ["primary", "qa"]}


def test_catalog_service(srv):
    entries = ok(srv, "/v1/catalog/service/api-internal", 'NodeMeta.os == "linux"')
    assert [e["Node"] for e in entries] == ["node-2"]
    entries = ok(srv, "/v1/catalog/service/api-internal", 'ServiceMeta["environment"] == "qa"')
    assert sorted(e["Node"] for e in entries) == ["node-1", "node-4"]


def test_catalog_nodes(srv):
    assert [n["Node"] for n in ok(srv, "/v1/catalog/nodes", "Meta.arch == i386")] == ["node-1", "node-4"]
    assert [n["Node"] for n in ok(srv, "/v1/catalog/nodes", 'Address == "198.18.0.2"')] == ["node-2"]


def test_catalog_node(srv):
    assert list(ok(srv, "/v1/catalog/node/node-1")["Services"]) == ["api-internal"]
    assert ok(srv, "/v1/catalog/node/node-1", 'Service == "redis"')["Services"] == {}
    assert list(ok(srv, "/v1/catalog/node/node-1", "Port == 9090")["Services"]) == ["api-internal"]


def test_health_service(srv):
    nodes = ok(srv, "/v1/health/service/api-internal", "Checks.Status == critical")
    assert [e["Node"]["Node"] for e in nodes] == ["node-2"]
    nodes = ok(srv, "/v1/health/service/api-internal", "not Checks.Status != passing")
    assert sorted(e["Node"]["Node"] for e in nodes) == ["node-1", "node-4"]
    nodes = ok(srv, "/v1/health/service/redis", '"qa" in Service.Tags')
    assert [e["Service"]["ID"] for e in nodes] == ["redis3"]


def test_health_checks(srv):
    checks = ok(srv, "/v1/health/checks/api-internal", "Status == critical")
    assert [(c["Node"], c["CheckID"]) for c in checks] == [("node-2", "service:api-internal")]


def test_health_node(srv):
    # Consul docs, Filtering > Health API
    checks = ok(srv, "/v1/health/node/node-1", 'ServiceName != ""')
    assert [c["CheckID"] for c in checks] == ["service:api-internal"]


def test_health_state(srv):
    checks = ok(srv, "/v1/health/state/any", 'CheckID == "node-health" and Node matches "-[14]$"')
    assert sorted(c["Node"] for c in checks) == ["node-1", "node-4"]
    assert [c["Node"] for c in ok(srv, "/v1/health/state/critical", 'Node != "node-2"')] == []


@pytest.mark.parametrize("path", [
    "/v1/agent/services", "/v1/agent/checks", "/v1/catalog/services", "/v1/catalog/service/redis",
    "/v1/catalog/nodes", "/v1/catalog/node/node-1", "/v1/health/service/redis", "/v1/health/checks/redis",
    "/v1/health/node/node-1", "/v1/health/state/any",
])
def test_every_filtering_endpoint_refuses_a_bad_expression_naming_it(srv, path):
    reply = get(srv, path, "Colour == red")
    assert reply.status == 400
    assert reply.text.startswith("Invalid request: filter: Selector 'Colour' is not valid"), reply.text
    reply = get(srv, path, "Node ==")
    assert reply.status == 400 and reply.text.startswith("Invalid request: filter: column 8:"), reply.text


def test_an_endpoint_that_does_not_filter_says_so(srv):
    reply = get(srv, "/v1/catalog/datacenters", "Datacenter == dc1")
    assert reply.status == 400 and "filter" in reply.text


def test_blocking_query_with_a_filter_returns_when_its_answer_changes(srv):
    first = get(srv, "/v1/health/service/redis", '"qa" in Service.Tags')
    assert [e["Service"]["ID"] for e in first.json()] == ["redis3"]
    result = {}

    def wait():
        result["reply"] = get(srv, f"/v1/health/service/redis?index={first.index}&wait=30s",
                              '"qa" in Service.Tags', timeout=60)
    waiter = threading.Thread(target=wait)
    waiter.start()
    body = {"ID": "redis4", "Name": "redis", "Tags": ["qa"], "Port": 1236, "Address": "127.0.0.1"}
    assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 200
    waiter.join(60)
    reply = result["reply"]
    assert reply.status == 200 and reply.index > first.index
    assert [e["Service"]["ID"] for e in reply.json()] == ["redis3", "redis4"]
    assert api(srv.http, "PUT", "/v1/agent/service/deregister/redis4").status == 200


def test_the_readme_example_filters(srv):
    readme = (ROOT / "README.md").read_text()
    expression = re.search(r"--data-urlencode 'filter=(.*)'", readme).group(1)
    body = {"ID": "billing-1", "Name": "billing", "Tags": ["v2"], "Address": "127.0.0.1",
            "Check": {"TTL": "60s", "CheckID": "billing-ttl", "Status": "critical"}}
    assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 200
    assert ok(srv, "/v1/health/service/billing", expression) == []
    assert api(srv.http, "PUT", "/v1/agent/check/pass/billing-ttl").status == 200
    assert [e["Service"]["ID"] for e in ok(srv, "/v1/health/service/billing", expression)] == ["billing-1"]
    assert api(srv.http, "PUT", "/v1/agent/service/deregister/billing-1").status == 200
