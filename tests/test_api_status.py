"""GET /v1/agent/self, /v1/status/leader and /v1/status/peers in Consul's shapes, read with py-consul too."""
import consul
import pytest

from harness import api
from meshdns import __version__


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server({"datacenter": "east"}, zones=tmp_path / "zones")


def test_agent_self_in_consuls_shape(srv):
    reply = api(srv.http, "GET", "/v1/agent/self")
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    config, member = body["Config"], body["Member"]
    node = api(srv.http, "GET", "/v1/catalog/nodes?dc=east").json()[0]["Node"]   # meshdns's own node
    assert (config["Datacenter"], config["PrimaryDatacenter"], config["NodeName"], config["Version"],
            config["Server"]) == ("east", "east", node, __version__, True)
    assert (member["Name"], member["Addr"], member["Status"], member["Tags"]["dc"]) == (node, "127.0.0.1", 1, "east")


def test_a_single_server_is_its_own_leader_and_only_peer(srv):
    own = f"127.0.0.1:{srv.http_port}"
    assert api(srv.http, "GET", "/v1/status/leader").json() == own
    assert api(srv.http, "GET", "/v1/status/peers").json() == [own]


def test_py_consul_reads_them(srv):
    client = consul.Consul(host="127.0.0.1", port=srv.http_port)
    me = client.agent.self()
    assert me["Config"]["Datacenter"] == "east" and me["Config"]["Version"] == __version__
    assert me["Member"]["Name"] == me["Config"]["NodeName"]
    assert client.status.leader() == f"127.0.0.1:{srv.http_port}"
    assert client.status.peers() == [f"127.0.0.1:{srv.http_port}"]


def test_an_ipv6_listen_address_is_bracketed(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    srv = start_server({"http": {"listen": "[::1]:0"}}, zones=tmp_path / "zones")
    base = f"http://[::1]:{srv.http_port}"
    assert api(base, "GET", "/v1/status/leader").json() == f"[::1]:{srv.http_port}"
    assert api(base, "GET", "/v1/status/peers").json() == [f"[::1]:{srv.http_port}"]
