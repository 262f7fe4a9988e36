#!/usr/bin/env python3
"""Datacenters: how fast a change in a peer is answered here, and what a big import costs.

    python tests/bench/peers.py propagation [--services 1000] [--changes 200]
    python tests/bench/peers.py import [--services 10000] [--instances 3]

`propagation`: two `meshdns serve` processes; dc2 holds N services (one of them changed through its
API, again and again), dc1 imports all of them and is asked for the changed one over UDP until it
answers the new address: p50/p99/max from the API call to the answer.
`import`: a Consul-shaped peer (tests/consul_double.py) with N services x M instances; one
`meshdns serve` imports it: time from start to synced, and the process's RSS before and after.
Run by hand; not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from consul_double import ConsulDouble, entry  # noqa: E402
from harness import api, query, rrset_values  # noqa: E402
from sites import Sites, peer  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_synced(srv, dc: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if api(srv.http, "GET", "/readyz").json()["sources"][f"peer/{dc}"]["synced"]:
            return time.monotonic() - started
        time.sleep(0.02)
    raise SystemExit(f"peer {dc} not synced within {timeout} s")


def propagation(args, tmp: Path) -> dict:
    zones = "".join(f'[[service]]\nname = "svc-{i}"\naddress = "10.{i >> 8 & 255}.{i & 255}.1"\nport = 80\n\n'
                    for i in range(args.services - 1))
    sites = Sites(tmp)
    try:
        dc2 = sites.start("dc2", zones=zones, extra=f"[http]\nmax_blocking_queries = {args.services + 100}")
        hot = {"Name": "hot", "ID": "hot-1", "Port": 80}
        api(dc2.http, "PUT", "/v1/agent/service/register", {**hot, "Address": "10.250.0.1"})
        dc1 = sites.start("dc1", peers=[peer("dc2", dc2)])
        sync_s = wait_synced(dc1, "dc2", 600)
        latencies = []
        for n in range(args.changes):
            ip = f"10.251.{n >> 8 & 255}.{n & 255}"
            started = time.monotonic()
            r = api(dc2.http, "PUT", "/v1/agent/service/register", {**hot, "Address": ip})
            assert r.status == 200, r
            while rrset_values(query(dc1.dns_port, "hot.service.dc2.consul")) != [ip]:
                time.sleep(0.001)
            latencies.append(time.monotonic() - started)
    finally:
        sites.stop()
    latencies.sort()
    return {"services": args.services, "changes": args.changes, "first_sync_s": round(sync_s, 2),
            "change_to_answer_ms_p50": round(statistics.median(latencies) * 1000, 1),
            "change_to_answer_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
            "change_to_answer_ms_max": round(latencies[-1] * 1000, 1)}


def bulk_import(args, tmp: Path) -> dict:
    double = ConsulDouble().start()
    sites = Sites(tmp)
    try:
        for i in range(args.services):
            double.set_service(f"svc-{i}", [entry(f"n-{i}-{k}", f"10.{i >> 8 & 255}.{i & 255}.{k + 1}", f"svc-{i}",
                                                  80) for k in range(args.instances)])
        started = time.monotonic()
        dc1 = sites.start("dc1", peers=[peer("dc2", double.url)])
        ready_s = time.monotonic() - started
        before = rss_mb(dc1.proc.pid)
        sync_s = ready_s + wait_synced(dc1, "dc2", 1800)
        after = rss_mb(dc1.proc.pid)
        assert rrset_values(query(dc1.dns_port, f"svc-{args.services - 1}.service.dc2.consul"))
    finally:
        sites.stop()
        double.stop()
    return {"services": args.services, "instances": args.services * args.instances,
            "start_to_synced_s": round(sync_s, 2), "rss_mb_at_start": round(before, 1),
            "rss_mb_synced": round(after, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("propagation", "import"))
    ap.add_argument("--services", type=int)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    args.services = args.services or (1000 if args.mode == "propagation" else 10_000)
    tmp = Path(tempfile.mkdtemp(prefix="meshdns-peers-bench-"))
    res = propagation(args, tmp) if args.mode == "propagation" else bulk_import(args, tmp)
    print(json.dumps(res, indent=2))
    out = Path(args.out or HERE / "results" / f"peers-{args.mode}.json")
    out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
