"""A registration that got a 200 survives kill -9; concurrent registrations lose nothing."""
import time
from concurrent.futures import ThreadPoolExecutor

import dns.rcode

from harness import ServerProcess, api, query, rrset_values


def start(tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir(exist_ok=True)
    return ServerProcess("--data-dir", str(tmp_path / "data"), "--zones", str(zones)).start()


def address(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def test_200_registrations_survive_kill_9(tmp_path):
    proc = start(tmp_path)
    try:
        started = time.monotonic()
        for i in range(200):
            r = api(proc.http, "PUT", "/v1/agent/service/register",
                    {"ID": f"svc-{i}", "Name": f"svc-{i}", "Address": address(i), "Port": 1000 + i,
                     "Check": {"TTL": "1h", "Status": "passing"}})
            assert r.status == 200, r.text
        took = time.monotonic() - started
        # a TTL check that was failing stays failing across the restart
        assert api(proc.http, "PUT", "/v1/agent/check/fail/service:svc-7").status == 200
        assert query(proc.dns_port, "svc-7.service.consul").rcode() == dns.rcode.NXDOMAIN
    finally:
        proc.kill()  # SIGKILL: no shutdown, no flush
    print(f"\n200 sequential registrations took {took:.2f}s ({took / 200 * 1000:.1f} ms each)")
    proc = start(tmp_path)
    try:
        for i in range(200):
            msg = query(proc.dns_port, f"svc-{i}.service.consul", "SRV")
            if i == 7:
                assert msg.rcode() == dns.rcode.NXDOMAIN
                continue
            assert rrset_values(msg) == [f"1 1 {1000 + i} {_hex(address(i))}.addr.dc1.consul."], i
            assert address(i) in rrset_values(msg, "additional")
        assert len(api(proc.http, "GET", "/v1/agent/services").json()) == 200
        assert api(proc.http, "GET", "/v1/agent/checks").json()["service:svc-7"]["Status"] == "critical"
        assert proc.stop() == 0, proc.stderr()  # SIGTERM: a clean stop
    finally:
        proc.kill()


def _hex(ip: str) -> str:
    return "".join(f"{int(p):02x}" for p in ip.split("."))


def test_50_concurrent_clients_lose_nothing(tmp_path):
    proc = start(tmp_path)

    def client(c: int) -> list[str]:
        kept = []
        for j in range(6):
            sid = f"c{c}-{j}"
            r = api(proc.http, "PUT", "/v1/agent/service/register",
                    {"ID": sid, "Name": f"pool-{j % 3}", "Address": address(c * 6 + j), "Port": 80})
            assert r.status == 200, r.text
            kept.append(sid)
        for sid in kept[:2]:  # and take two back
            assert api(proc.http, "PUT", f"/v1/agent/service/deregister/{sid}").status == 200
        return kept[2:]

    try:
        started = time.monotonic()
        with ThreadPoolExecutor(50) as pool:
            expected = sorted(sid for ids in pool.map(client, range(50)) for sid in ids)
        took = time.monotonic() - started
        assert sorted(api(proc.http, "GET", "/v1/agent/services").json()) == expected
    finally:
        proc.kill()
    print(f"\n50 clients: 300 registrations + 100 deregistrations in {took:.2f}s")
    proc = start(tmp_path)
    try:
        assert sorted(api(proc.http, "GET", "/v1/agent/services").json()) == expected
        answered = set()
        for pool_name in ("pool-0", "pool-1", "pool-2"):
            answered |= set(rrset_values(query(proc.dns_port, f"{pool_name}.service.consul", tcp=True)))
        assert answered == {address(int(sid[1:].split("-")[0]) * 6 + int(sid.split("-")[1])) for sid in expected}
    finally:
        proc.stop()


def test_agent_registrations_follow_a_renamed_host(tmp_path, monkeypatch):
    """In Kubernetes the pod name (our hostname) changes on every restart: nothing may be lost."""
    import socket

    from harness import ServerThread, make_config
    (tmp_path / "zones").mkdir()
    cfg = make_config(tmp_path, zones=tmp_path / "zones")
    monkeypatch.setattr(socket, "gethostname", lambda: "meshdns-7d9f-abcde")
    srv = ServerThread(cfg).start()
    try:
        api(srv.http, "PUT", "/v1/agent/service/register",
            {"ID": "web-1", "Name": "web", "Address": "127.0.0.4", "Check": {"TTL": "1h", "Status": "passing"}})
        api(srv.http, "PUT", "/v1/agent/check/warn/service:web-1")
    finally:
        srv.stop()
    monkeypatch.setattr(socket, "gethostname", lambda: "meshdns-7d9f-fghij")
    srv = ServerThread(cfg).start()
    try:
        entry = api(srv.http, "GET", "/v1/health/service/web").json()
        assert [(e["Node"]["Node"], e["Service"]["ID"]) for e in entry] == [("meshdns-7d9f-fghij", "web-1")]
        assert entry[0]["Checks"][0]["Status"] == "warning"
        assert rrset_values(query(srv.dns_port, "web.service.consul")) == ["127.0.0.4"]
        assert api(srv.http, "PUT", "/v1/agent/service/deregister/web-1").status == 200
        assert srv.app.registrations.db.load("service") == {}
    finally:
        srv.stop()
