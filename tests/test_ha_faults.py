"""Replicas on etcd under faults: etcd members killed (the leader too) during a stream of registrations,
every member down, compaction while a replica is paused, and moving a single server's data onto etcd.

Each test starts its own 3-member etcd (kill -9, restarts, compaction) and real `meshdns serve`
replicas; nothing acknowledged may be lost, DNS never stops answering.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.error

from etcd_cluster import etcd, etcd_own  # noqa: F401 (fixtures)
from harness import ROOT, ServerProcess, api, metric_samples, query, rrset_values, wait_until
from replica_set import replica_sets  # noqa: F401 (fixture)


def address(i: int) -> str:
    return f"127.4.{i // 250}.{i % 250 + 1}"


def agent_services(proc) -> dict:
    return api(proc.http, "GET", "/v1/agent/services").json()


class Registrations:
    """Client threads registering through the replicas in turn; what got a 200 is acknowledged."""

    def __init__(self, rs, *, clients: int = 4):
        self.rs = rs
        self.acked: dict[str, str] = {}
        self.refused: list[tuple[str, object]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(c,)) for c in range(clients)]

    def _client(self, c: int) -> None:
        procs = self.rs.live
        for j in range(5000):   # bounded
            if self.stop.is_set():
                return
            sid, addr = f"load-{c}-{j}", address(c * 1000 + j)
            proc = procs[(c + j) % len(procs)]
            try:
                r = api(proc.http, "PUT", "/v1/agent/service/register",
                        {"ID": sid, "Name": "load", "Address": addr, "Port": 80}, timeout=20)
                outcome = r.status
            except (OSError, urllib.error.URLError) as exc:
                outcome = type(exc).__name__
            with self.lock:
                if outcome == 200:
                    self.acked[sid] = addr
                else:
                    self.refused.append((sid, outcome))

    def __enter__(self) -> "Registrations":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def more(self, n: int, timeout: float = 60) -> None:
        """Wait for `n` more acknowledgements."""
        target = len(self.acked) + n
        wait_until(lambda: len(self.acked) >= target, timeout, 0.05, what=f"{n} more registrations acknowledged")


def test_no_acknowledged_registration_is_lost_when_etcd_members_and_the_leader_die(etcd_own, replica_sets):
    rs = replica_sets(etcd_own).start_all()
    with Registrations(rs) as load:
        load.more(100)
        follower = next(i for i in range(3) if i != etcd_own.leader())
        etcd_own.kill(follower)
        load.more(100)
        etcd_own.restart(follower)
        etcd_own.wait_healthy()
        leader = etcd_own.leader()
        etcd_own.kill(leader)
        load.more(100, timeout=120)              # a new etcd leader is elected; writes go on
        etcd_own.restart(leader)
        etcd_own.wait_healthy()
        load.more(50)
    # a refused write is a 503 (store unavailable) or nothing at all: never a wrong answer
    assert all(outcome == 503 for _, outcome in load.refused), load.refused[:10]
    for proc in rs.procs:
        wait_until(lambda: set(load.acked) <= set(agent_services(proc)), 60, 0.2,
                   what="every acknowledged registration on every replica")
        services = agent_services(proc)
        assert all(services[sid]["Address"] == addr for sid, addr in load.acked.items())
    sample = sorted(load.acked)[:: max(1, len(load.acked) // 20)]
    for proc in rs.procs:
        answer = sorted(rrset_values(query(proc.dns_port, "load.service.consul", tcp=True, payload=65535)))
        assert {load.acked[sid] for sid in sample} <= set(answer)
    print(f"\netcd follower and leader killed under load: {len(load.acked)} acknowledged, "
          f"{len(load.refused)} refused with 503, 0 lost on {len(rs.procs)} replicas")


OUTAGE = 30  # seconds every etcd member stays down (the scenario)


def test_every_etcd_member_down_dns_answers_writes_get_503_and_all_recovers(etcd_own, replica_sets):
    rs = replica_sets(etcd_own).start_all()
    r0 = rs.procs[0]
    assert api(r0.http, "PUT", "/v1/agent/service/register",
               {"ID": "web-1", "Name": "web", "Address": "127.4.0.1", "Port": 80}).status == 200
    wait_until(lambda: all(agent_services(p) for p in rs.procs), 30, what="registered everywhere")
    for i in range(3):
        etcd_own.kill(i)
    down_since = time.monotonic()
    for proc in rs.procs:
        wait_until(lambda: api(proc.http, "GET", "/readyz").json()["store"]["connected"] is False, 60, 0.1,
                   what="/readyz reports the store disconnected")
        ready = api(proc.http, "GET", "/readyz")
        assert ready.status == 200 and ready.json()["store"]["backend"] == "etcd"   # still serving
        assert rrset_values(query(proc.dns_port, "web.service.consul")) == ["127.4.0.1"]
        started = time.monotonic()
        r = api(proc.http, "PUT", "/v1/agent/service/register",
                {"ID": "web-2", "Name": "web", "Address": "127.4.0.2", "Port": 80}, timeout=60)
        took = time.monotonic() - started
        assert r.status == 503 and r.headers["Retry-After"], r
        assert "etcd" in r.text and etcd_own.endpoints[0] in r.text, r.text   # names the store
        assert took < 2 * 3 + 5, took                                       # within the (2 s) timeout, generously
        assert api(proc.http, "GET", "/v1/catalog/service/web").headers["X-Consul-KnownLeader"] == "false"
        assert sorted(api(proc.http, "GET", "/v1/agent/services").json()) == ["web-1"]
    while time.monotonic() - down_since < OUTAGE:   # the whole outage: every replica keeps answering DNS
        for proc in rs.procs:
            assert rrset_values(query(proc.dns_port, "web.service.consul")) == ["127.4.0.1"]
        time.sleep(1)
    for i in range(3):
        etcd_own.restart(i)
    etcd_own.wait_healthy()
    for proc in rs.procs:     # back by itself: no restart of meshdns
        wait_until(lambda: api(proc.http, "GET", "/readyz").json()["store"]["connected"] is True, 60, 0.1,
                   what="/readyz reports the store connected again")
    rs.wait_members(3)
    for i, proc in enumerate(rs.procs):
        r = api(proc.http, "PUT", "/v1/agent/service/register",
                {"ID": f"after-{i}", "Name": "web", "Address": f"127.4.1.{i + 1}", "Port": 80}, timeout=30)
        assert r.status == 200, r
    for proc in rs.procs:
        wait_until(lambda: sorted(rrset_values(query(proc.dns_port, "web.service.consul"))) ==
                   ["127.4.0.1", "127.4.1.1", "127.4.1.2", "127.4.1.3"], 30, what="all writes answered everywhere")


def test_a_replica_paused_across_a_compaction_catches_up(etcd_own, replica_sets):
    rs = replica_sets(etcd_own).start_all()
    r0, r2 = rs.procs[0], rs.procs[2]
    for i in range(10):
        assert api(r0.http, "PUT", "/v1/agent/service/register",
                   {"ID": f"old-{i}", "Name": "old", "Address": address(i), "Port": 80}).status == 200
    wait_until(lambda: len(agent_services(r2)) == 10, 30, what="r2 has the first registrations")
    relists = metric_samples(r2.http)[("meshdns_store_relists_total", ())]
    r2.signal(signal.SIGSTOP)
    try:
        filler = {"blob": "x" * 20_000}   # 8 MB: more than the paused replica's connection buffers hold
        for i in range(400):
            assert api(r0.http, "PUT", "/v1/agent/service/register",
                       {"ID": f"new-{i}", "Name": "new", "Address": address(100 + i), "Port": 80,
                        "Meta": filler}).status == 200
        for i in range(5):
            assert api(r0.http, "PUT", f"/v1/agent/service/deregister/old-{i}").status == 200
        etcd_own.compact()
    finally:
        r2.signal(signal.SIGCONT)
    expected = sorted(agent_services(r0))
    wait_until(lambda: sorted(agent_services(r2)) == expected, 60, 0.2, what="the paused replica caught up")
    assert sorted(rrset_values(query(r2.dns_port, "old.service.consul"))) == sorted(address(i) for i in range(5, 10))
    rs.wait_members(3)                          # its lease lapsed while paused: it joined again
    after = metric_samples(r2.http)[("meshdns_store_relists_total", ())]
    print(f"\npaused across a compaction: relists {relists:g} -> {after:g}")
    assert after > relists                      # the history it had not read was gone: it listed again


def test_migrate_copies_a_single_server_into_etcd_and_a_second_run_changes_nothing(etcd, replica_sets, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    data = tmp_path / "single"
    single = ServerProcess("--data-dir", str(data), "--zones", str(zones)).start()
    try:
        for i in range(3):
            assert api(single.http, "PUT", "/v1/agent/service/register",
                       {"ID": f"web-{i}", "Name": "web", "Address": address(i), "Port": 80,
                        "Check": {"TTL": "1h", "Status": "passing", "CheckID": f"ttl-{i}"}}).status == 200
        assert api(single.http, "PUT", "/v1/agent/check/fail/ttl-1?note=down").status == 200
        assert api(single.http, "PUT", "/v1/config", {"Kind": "service-splitter", "Name": "front",
                                                      "Splits": [{"Weight": 100, "Service": "web"}]}).status == 200
        before = view(single)
        assert single.stop() == 0
    finally:
        single.kill()
    rs = replica_sets(etcd)

    def migrate() -> str:
        out = subprocess.run([sys.executable, "-m", "meshdns", "store", "migrate", "--data-dir", str(data),
                              "--endpoints", ",".join(etcd.endpoints), "--prefix", rs.prefix],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    first = migrate()
    revision = etcd.revision()
    second = migrate()
    assert etcd.revision() == revision            # nothing written the second time
    written = int(first.split(": ")[1].split()[0])
    assert written > 0 and f"0 records written, {written} already there" in second, (first, second)
    rs.start_all()
    moved = [view(p) for p in rs.procs]
    assert all(m == moved[0] for m in moved)
    assert strip_indexes(moved[0]) == strip_indexes(before)
    indexes = moved[0]
    assert "0 records written" in migrate()       # a third run, replicas running: indexes stay
    assert all(view(p) == indexes for p in rs.procs)


def view(proc) -> dict:
    checks = api(proc.http, "GET", "/v1/health/checks/web").json()
    return {"services": sorted((e["ServiceID"], e["ServiceAddress"], e["ModifyIndex"])
                               for e in api(proc.http, "GET", "/v1/catalog/service/web").json()),
            "checks": sorted((c["CheckID"], c["Status"], c["Output"], c["ModifyIndex"]) for c in checks),
            "split": [(s["Name"], s["Splits"], s["ModifyIndex"])
                      for s in api(proc.http, "GET", "/v1/config/service-splitter").json()],
            "dns": sorted(rrset_values(query(proc.dns_port, "front.service.consul")))}


def strip_indexes(v: dict) -> dict:
    """The same entries, whatever store revisions they carry (etcd's revisions are its own)."""
    return {key: [tuple(x for x in entry if not isinstance(x, int)) for entry in entries] if key != "dns" else entries
            for key, entries in v.items()}


