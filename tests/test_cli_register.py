"""`meshdns register FILE.json` / `meshdns deregister ID|FILE.json` against the real server."""
import json
import subprocess
import sys

import dns.rcode
import pytest

from harness import ROOT, api, query, rrset_values


def meshdns(*args, env=None):
    import os
    full_env = {k: v for k, v in os.environ.items() if not k.endswith("_HTTP_ADDR") and not k.endswith("_HTTP_TOKEN")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "meshdns", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env=full_env)


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server({"acl": {"tokens": [{"secret": "vm-boot", "write": ["billing"]}]}},
                        zones=tmp_path / "zones")


def test_register_and_deregister_a_consul_service_file(srv, tmp_path):
    # the `consul services register` file shape
    path = tmp_path / "billing.json"
    path.write_text(json.dumps({"Service": {"Name": "billing", "Port": 8080, "Tags": ["legacy"],
                                            "Check": {"TTL": "1h", "Status": "passing"}}}))
    addr = f"127.0.0.1:{srv.http_port}"
    out = meshdns("register", str(path), "--http-addr", addr, "--token", "vm-boot")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Registered service: billing (ID billing-127.0.0.1)"
    assert rrset_values(query(srv.dns_port, "billing.service.consul", "SRV")) == \
        ["1 1 8080 7f000001.addr.dc1.consul."]
    out = meshdns("deregister", str(path), env={"MESHDNS_HTTP_ADDR": f"http://{addr}",
                                                "MESHDNS_HTTP_TOKEN": "vm-boot"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Deregistered service: billing-127.0.0.1"
    assert query(srv.dns_port, "billing.service.consul").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("address, stored", [("FD00:0:0:0::7", "fd00::7"), ("::ffff:127.0.0.9", "::ffff:7f00:9"),
                                             ("Billing-VM.Example.com", "billing-vm.example.com")])
def test_the_id_printed_is_the_id_the_server_stores(srv, tmp_path, address, stored):
    path = tmp_path / "billing.json"
    path.write_text(json.dumps({"Name": "billing", "Address": address, "Port": 8080}))
    addr = f"127.0.0.1:{srv.http_port}"
    out = meshdns("register", str(path), "--http-addr", addr, "--token", "vm-boot")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"Registered service: billing (ID billing-{stored})"
    assert list(api(srv.http, "GET", "/v1/agent/services").json()) == [f"billing-{stored}"]
    out = meshdns("deregister", str(path), "--http-addr", addr, "--token", "vm-boot")
    assert out.returncode == 0 and out.stdout.strip() == f"Deregistered service: billing-{stored}", out.stderr
    assert api(srv.http, "GET", "/v1/agent/services").json() == {}


def test_several_services_and_deregister_by_id(srv, tmp_path):
    path = tmp_path / "svcs.json"
    path.write_text(json.dumps({"Services": [{"ID": "billing-a", "Name": "billing", "Address": "127.0.0.7"},
                                             {"ID": "billing-b", "Name": "billing", "Address": "127.0.0.8"}]}))
    addr = f"127.0.0.1:{srv.http_port}"
    assert meshdns("register", str(path), "--http-addr", addr, "--token", "vm-boot").returncode == 0
    assert sorted(api(srv.http, "GET", "/v1/agent/services").json()) == ["billing-a", "billing-b"]
    out = meshdns("deregister", "billing-a", "--http-addr", addr, "--token", "vm-boot")
    assert out.returncode == 0 and out.stdout.strip() == "Deregistered service: billing-a"
    assert list(api(srv.http, "GET", "/v1/agent/services").json()) == ["billing-b"]


@pytest.mark.parametrize("content, token, expect", [
    ({"Name": "billing", "Port": 99999}, "vm-boot", "400"),
    ({"Name": "redis"}, "vm-boot", "403"),
    ({"Name": "billing"}, None, "403"),
    ("{not json", "vm-boot", "invalid JSON"),
])
def test_errors_are_reported(srv, tmp_path, content, token, expect):
    path = tmp_path / "svc.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    args = ["register", str(path), "--http-addr", f"127.0.0.1:{srv.http_port}"]
    out = meshdns(*args, *(["--token", token] if token else []))
    assert out.returncode == 1 and expect in out.stderr
    assert "vm-boot" not in out.stderr
    assert api(srv.http, "GET", "/v1/agent/services").json() == {}


def test_unreachable_server(tmp_path):
    path = tmp_path / "svc.json"
    path.write_text(json.dumps({"Name": "billing"}))
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out = meshdns("register", str(path), "--http-addr", f"127.0.0.1:{port}")
    assert out.returncode == 1 and "cannot reach meshdns" in out.stderr
