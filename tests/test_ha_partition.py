"""A replica cut off from etcd by a real network partition, then reconnected.

The replica runs in a network namespace of its own, joined to the host by a
veth pair the test creates (only the two addresses on that pair are used);
the etcd members also take clients on the host's end. Taking the host's end
down cuts the replica off: it keeps answering DNS from its last snapshot,
refuses writes with 503, and the others take over its checks; when the link
comes back it catches up and rejoins by itself. The test talks to the cut-off
replica from inside its namespace (its own loopback), so the link it cuts
carries only the replica's own traffic.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from etcd_cluster import NO_ETCD, EtcdCluster, etcd_binary
from harness import FlipHttpServer, api, dig_path, metric_samples, wait_until
from replica_set import replica_sets  # noqa: F401 (fixture)

_INSIDE = """
import json, sys, urllib.error, urllib.request
url, method, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, data=body.encode() if body else None, method=method)
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        status, headers, data = r.status, dict(r.headers), r.read()
except urllib.error.HTTPError as e:
    status, headers, data = e.code, dict(e.headers), e.read()
print(json.dumps({"status": status, "headers": headers, "body": data.decode()}))
"""


class Namespace:
    """A network namespace and a veth pair: host end `host`, namespace end `inside` (a /30 of their own)."""

    def __init__(self):
        tag = os.getpid() % 100_000
        self.name = f"meshdns-t{tag}"
        self.veth = f"mdv{tag}"
        third = tag % 250
        self.host, self.inside = f"10.250.{third}.1", f"10.250.{third}.2"

    def sh(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)

    def create(self) -> "Namespace":
        self.sh("ip", "netns", "add", self.name)
        self.sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.veth + "n")
        self.sh("ip", "link", "set", self.veth + "n", "netns", self.name)
        self.sh("ip", "addr", "add", f"{self.host}/30", "dev", self.veth)
        self.sh("ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.inside}/30", "dev", self.veth + "n")
        self.sh("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        self.sh("ip", "netns", "exec", self.name, "ip", "link", "set", self.veth + "n", "up")
        self.link(True)
        return self

    def link(self, up: bool) -> None:
        self.sh("ip", "link", "set", self.veth, "up" if up else "down")

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, timeout=30)   # gone with it, usually

    @property
    def wrap(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def api(self, port: int, method: str, path: str, body=None) -> dict:
        out = subprocess.run([*self.wrap, sys.executable, "-c", _INSIDE, f"http://127.0.0.1:{port}{path}", method,
                              json.dumps(body) if body is not None else ""],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def dig(self, port: int, name: str) -> list[str]:
        out = subprocess.run([*self.wrap, dig_path(), "@127.0.0.1", "-p", str(port), "+time=3", "+tries=1",
                              "+short", name], capture_output=True, text=True, timeout=30)
        return sorted(out.stdout.split())


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ns = Namespace()
    try:
        ns.create()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        ns.delete()
        pytest.skip(f"network namespaces are not permitted here: {getattr(exc, 'stderr', exc)}")
    yield ns
    ns.delete()


def owned(base: str) -> int:
    return int(metric_samples(base)[("meshdns_checks_run_here", (("owner", "registrations"),))])


def owned_inside(ns: Namespace, port: int) -> int:
    text = ns.api(port, "GET", "/metrics")["body"]
    line = next(ln for ln in text.splitlines() if ln.startswith('meshdns_checks_run_here{owner="registrations"}'))
    return int(float(line.split()[-1]))


def statuses(checks: list[dict]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for c in checks:
        counts[c["Status"]] = counts.get(c["Status"], 0) + 1
    return sorted(counts.items())


def test_a_replica_cut_off_by_a_partition_serves_dns_refuses_writes_loses_its_checks_and_rejoins(
        netns, replica_sets, tmp_path):
    if etcd_binary() is None:
        pytest.skip(NO_ETCD)
    cluster = EtcdCluster(tmp_path, extra_hosts=(netns.host,)).start()
    target = FlipHttpServer(200, host=netns.host)   # reachable from both sides while the link is up
    try:
        rs = replica_sets(cluster)
        r0, r1 = rs.start(0), rs.start(1)
        cut = rs.start(2, wrap=netns.wrap, endpoints=cluster.endpoints_on(netns.host))
        rs.procs[2] = None                                        # not reachable from here: asked from inside
        wait_until(lambda: all(len(rs.peers(p)) == 3 for p in (r0, r1)), 60, 0.1, what="three members")
        n = 12
        for i in range(n):
            assert api(r0.http, "PUT", "/v1/agent/service/register",
                       {"ID": f"web-{i}", "Name": "web", "Address": f"127.2.0.{i + 1}", "Port": 80,
                        "Check": {"HTTP": target.url, "Interval": "500ms", "Status": "critical"}}).status == 200
        wait_until(lambda: all(statuses(api(p.http, "GET", "/v1/health/checks/web").json()) == [("passing", n)]
                               for p in (r0, r1)), 60, 0.1, what="every check passing")
        shares = [owned(r0.http), owned(r1.http), owned_inside(netns, cut.http_port)]
        assert sum(shares) == n and shares[2] > 0, shares

        netns.link(False)                                        # the partition
        wait_until(lambda: all(len(rs.peers(p)) == 2 for p in (r0, r1)), 60, 0.1,
                   what="the others see the cut-off replica's lease lapse")
        wait_until(lambda: owned(r0.http) + owned(r1.http) == n, 60, 0.1, what="its checks moved to the others")
        target.status = 500                                      # the moved checks keep being run
        wait_until(lambda: all(statuses(api(p.http, "GET", "/v1/health/checks/web").json()) == [("critical", n)]
                               for p in (r0, r1)), 60, 0.1, what="every check's failure seen by the others")
        # the cut-off replica: DNS from its last snapshot, writes refused, the store reported disconnected
        assert len(netns.dig(cut.dns_port, "web.service.consul")) == n
        refused = netns.api(cut.http_port, "PUT", "/v1/agent/service/register",
                            {"ID": "web-x", "Name": "web", "Address": "127.2.1.1", "Port": 80})
        assert refused["status"] == 503 and refused["headers"].get("Retry-After"), refused
        assert "etcd" in refused["body"]
        wait_until(lambda: json.loads(netns.api(cut.http_port, "GET", "/readyz")["body"])["store"]["connected"]
                   is False, 60, 0.2, what="the cut-off replica reports the store disconnected")

        netns.link(True)                                         # the link is back: it rejoins by itself
        wait_until(lambda: all(len(rs.peers(p)) == 3 for p in (r0, r1)), 60, 0.2, what="it joined again")
        wait_until(lambda: statuses(json.loads(netns.api(cut.http_port, "GET", "/v1/health/checks/web")["body"]))
                   == [("critical", n)], 60, 0.2, what="it caught up with what changed while it was cut off")
        wait_until(lambda: owned(r0.http) + owned(r1.http) + owned_inside(netns, cut.http_port) == n, 60, 0.2,
                   what="each check run by exactly one replica again")
        assert netns.api(cut.http_port, "PUT", "/v1/agent/service/register",
                         {"ID": "web-y", "Name": "web", "Address": "127.2.1.2", "Port": 80})["status"] == 200
        wait_until(lambda: "web-y" in api(r0.http, "GET", "/v1/agent/services").json(), 30, what="its write seen")
    finally:
        target.close()
        cut_proc = locals().get("cut")
        if cut_proc is not None:
            cut_proc.kill()
        cluster.stop()
