"""Bad input: 400 with a message naming the field, and nothing stored (not in the API, not on disk)."""
import json

import pytest

from harness import ServerThread, api, make_config

GOOD = {"ID": "web-1", "Name": "web", "Address": "127.0.0.1", "Port": 80}


def svc(**changes):
    body = dict(GOOD)
    for k, v in changes.items():
        if v is None:
            body.pop(k, None)
        else:
            body[k] = v
    return body


AGENT_CASES = [
    (svc(Name="not a label"), "Name"),
    (svc(Name="-web"), "Name"),
    (svc(Name="x" * 64), "Name"),
    (svc(Name=None), "Name"),
    (svc(Port=70000), "Port"),
    (svc(Port=-1), "Port"),
    (svc(Port="80"), "Port"),
    (svc(Address="300.1.2.3"), "Address"),
    (svc(Address="10.0.0.1/24"), "Address"),
    (svc(Address="0.0.0.0"), "Address"),
    (svc(Address="::"), "Address"),
    (svc(Address="0:0::0"), "Address"),
    (svc(ID="has/slash"), "ID"),
    (svc(Tags="primary"), "Tags"),
    (svc(Meta={"k": 1}), "Meta.k"),
    (svc(Weights={"Passing": 0}), "Weights.passing"),
    (svc(Weights={"Passing": 1, "Heavy": 2}), "Weights.heavy"),
    (svc(Adress="127.0.0.1"), "Adress"),
    (svc(Kind="connect-proxy"), "Kind"),
    (svc(Check={"Script": "/bin/true", "Interval": "10s"}), "Check.Script"),
    (svc(Check={"GRPC": "127.0.0.1:1", "Interval": "10s"}), "Check.GRPC"),
    (svc(Check={"Interval": "10s"}), "Check"),
    (svc(Check={"HTTP": "http://127.0.0.1:1/", "TCP": "127.0.0.1:1", "Interval": "10s"}), "Check"),
    (svc(Check={"HTTP": "http://127.0.0.1:1/", "Interval": "ten seconds"}), "Check.Interval"),
    (svc(Check={"HTTP": "http://127.0.0.1:1/", "Interval": "10s", "Timeout": "5 parsecs"}), "Check.Timeout"),
    (svc(Check={"HTTP": "ftp://127.0.0.1/", "Interval": "10s"}), "Check.HTTP"),
    (svc(Check={"TCP": "127.0.0.1", "Interval": "10s"}), "Check.TCP"),
    (svc(Check={"TTL": "10s", "DeregisterCriticalServiceAfter": "later"}), "Check.DeregisterCriticalServiceAfter"),
    (svc(Check={"TTL": "10s", "Status": "great"}), "Check.Status"),
    (svc(Checks=[{"TTL": "10s"}, {"TTL": "bad"}]), "Checks[1].TTL"),
    (svc(Check={"TCP": "127.0.0.1:1", "Interval": "10s", "FailuresBeforeWarning": 2}),
     "Check.FailuresBeforeWarning"),
    ([1, 2, 3], "body"),
]


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server(zones=tmp_path / "zones")


def nothing_stored(srv):
    assert api(srv.http, "GET", "/v1/agent/services").json() == {}
    assert api(srv.http, "GET", "/v1/agent/checks").json() == {}
    assert api(srv.http, "GET", "/v1/catalog/services").json() == {}
    assert [n["Node"] for n in api(srv.http, "GET", "/v1/catalog/nodes").json()] == \
        [srv.app.registrations.agent_node.name]
    db = srv.app.registrations.db
    assert all(db.load(kind) == {} for kind in ("service", "check", "node", "check-status"))


@pytest.mark.parametrize("body, field", AGENT_CASES, ids=[c[1] + f"-{i}" for i, c in enumerate(AGENT_CASES)])
def test_agent_register_rejects(srv, body, field):
    r = api(srv.http, "PUT", "/v1/agent/service/register", body)
    assert r.status == 400, r.text
    assert r.text.startswith(f"Invalid request: {field}:"), r.text
    nothing_stored(srv)


CATALOG_CASES = [
    ({"Address": "192.168.1.1"}, "Node"),
    ({"Node": "n1"}, "Address"),
    ({"Node": "n1", "Address": "not an ip!"}, "Address"),
    ({"Node": "n1", "Address": "192.168.1.1", "Datacenter": "dc 2"}, "Datacenter"),
    ({"Node": "n1", "Address": "192.168.1.1", "NodeMeta": "x"}, "NodeMeta"),
    ({"Node": "n1", "Address": "192.168.1.1", "Service": {"Service": "web", "Port": 99999}}, "Service.Port"),
    ({"Node": "n1", "Address": "192.168.1.1", "Service": {"Service": "web", "Address": "0.0.0.0"}},
     "Service.Address"),
    ({"Node": "n1", "Address": "192.168.1.1", "Service": {"Service": "web"},
      "Check": {"CheckID": "c", "Status": "fine"}}, "Check.Status"),
    ({"Node": "n1", "Address": "192.168.1.1", "Check": {"CheckID": "c", "Node": "other"}}, "Check.Node"),
    ({"Node": "n1", "Address": "192.168.1.1", "Check": {"CheckID": "c", "ServiceID": "ghost"}},
     "Check.ServiceID"),
    # the second check refers to a service that does not exist: the whole request is refused
    ({"Node": "n1", "Address": "192.168.1.1", "Service": {"Service": "web"},
      "Checks": [{"CheckID": "a", "ServiceID": "web"}, {"CheckID": "b", "ServiceID": "ghost"}]},
     "Checks[1].ServiceID"),
]


@pytest.mark.parametrize("body, field", CATALOG_CASES, ids=[c[1] + f"-{i}" for i, c in enumerate(CATALOG_CASES)])
def test_catalog_register_rejects(srv, body, field):
    r = api(srv.http, "PUT", "/v1/catalog/register", body)
    assert r.status == 400, r.text
    assert r.text.startswith(f"Invalid request: {field}:"), r.text
    nothing_stored(srv)


@pytest.mark.parametrize("raw, message", [
    (b'{"Name": "web",', "invalid JSON"),
    (b"", "a JSON object is required"),
    (b"\xff\xfe", "UTF-8"),
])
def test_unparseable_bodies(srv, raw, message):
    r = api(srv.http, "PUT", "/v1/agent/service/register", raw=raw)
    assert r.status == 400 and r.text.startswith("Invalid request: body:") and message in r.text
    nothing_stored(srv)


def test_body_over_the_limit(srv):
    big = json.dumps(svc(Meta={"pad": "x" * (1 << 20)})).encode()
    r = api(srv.http, "PUT", "/v1/agent/service/register", raw=big)
    assert r.status == 400 and "body" in r.text and "1048576" in r.text
    nothing_stored(srv)
    # the limit is the body, not the connection: a normal request still works afterwards
    assert api(srv.http, "PUT", "/v1/agent/service/register", GOOD).status == 200


def test_unknown_ids_are_404(srv):
    for path in ("/v1/agent/service/deregister/ghost", "/v1/agent/check/deregister/ghost",
                 "/v1/agent/check/pass/ghost", "/v1/agent/service/maintenance/ghost?enable=true"):
        r = api(srv.http, "PUT", path)
        assert r.status == 404 and "ghost" in r.text, path
    assert api(srv.http, "GET", "/v1/agent/service/ghost").status == 404
    nothing_stored(srv)


def test_check_register_needs_a_known_service(srv):
    r = api(srv.http, "PUT", "/v1/agent/check/register", {"Name": "c", "TTL": "10s", "ServiceID": "ghost"})
    assert r.status == 400 and r.text.startswith("Invalid request: ServiceID:")
    r = api(srv.http, "PUT", "/v1/agent/check/register", {"TTL": "10s"})
    assert r.status == 400 and r.text.startswith("Invalid request: Name:")
    nothing_stored(srv)


def test_bad_query_parameters(srv):
    assert api(srv.http, "GET", "/v1/health/state/sideways").status == 400
    r = api(srv.http, "GET", "/v1/health/service/web?dc=no%20such")
    assert r.status == 400 and "dc" in r.text
    r = api(srv.http, "GET", "/v1/health/service/web?filter=Service.Prot%3D%3D80")
    assert r.status == 400 and r.text.startswith("Invalid request: filter: Selector 'Service.Prot' is not valid")
    r = api(srv.http, "GET", "/v1/health/service/web?passing=maybe")
    assert r.status == 400 and "passing" in r.text


def test_nothing_bad_survives_a_restart(tmp_path):
    (tmp_path / "zones").mkdir()
    cfg = make_config(tmp_path, zones=tmp_path / "zones")
    srv = ServerThread(cfg).start()
    try:
        for body, _ in AGENT_CASES:
            api(srv.http, "PUT", "/v1/agent/service/register", body)
        api(srv.http, "PUT", "/v1/agent/service/register", GOOD)
    finally:
        srv.stop()
    srv = ServerThread(cfg).start()
    try:
        assert list(api(srv.http, "GET", "/v1/agent/services").json()) == ["web-1"]
        assert api(srv.http, "GET", "/readyz").json()["sources"]["registrations"]["errors"] == {}
    finally:
        srv.stop()
