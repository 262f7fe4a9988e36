#!/usr/bin/env python3
"""Soak: DNS load at 80% of the measured maximum for 60 s while registrations,
split changes and Kubernetes events churn the catalog; report loss, latency
and memory at start and end.

    python tests/bench/soak.py [--seconds 60] [--load 0.8]

meshdns runs as a real process pinned to core 0 with the bench catalog, a
Kubernetes cluster (the API server double) and the HTTP API; dnsperf on core 1
sends the load; a probe thread measures round trips at a low steady rate so
the p99 reflects what a client sees under load. Loopback only; every loop is
bounded by the soak's duration.
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench import dnsperf, free_port, make_catalog, query_files, start_meshdns, wait_answering  # noqa: E402
from harness import api  # noqa: E402
from kube_double import KubeDouble, endpoint_slice, service  # noqa: E402


def probe(port: int, stop: threading.Event, out: list[float], lost: list[int]) -> None:
    """One A query every 5 ms on its own socket; round trips in seconds."""
    pkt = struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + b"\x05svc-1\x07service\x06consul\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        qid = 0
        while not stop.is_set():
            qid = (qid + 1) & 0xFFFF
            t0 = time.perf_counter()
            s.sendto(struct.pack("!H", qid) + pkt[2:], ("127.0.0.1", port))
            try:
                while True:
                    data = s.recv(4096)
                    if data[:2] == struct.pack("!H", qid):
                        break
                out.append(time.perf_counter() - t0)
            except socket.timeout:
                lost[0] += 1
            time.sleep(0.005)


def churn(http: str, double: KubeDouble, stop: threading.Event, counts: dict) -> None:
    """Registrations every 50 ms, a split change every second, an EndpointSlice change every 100 ms."""
    rng = random.Random(7)
    tick = 0
    while not stop.is_set():
        tick += 1
        n = rng.randrange(200)
        if rng.random() < 0.7:
            r = api(http, "PUT", "/v1/agent/service/register",
                    {"Name": f"vm-{n}", "ID": f"vm-{n}", "Address": f"10.99.{n >> 8}.{n & 255}", "Port": 80})
        else:
            r = api(http, "PUT", f"/v1/agent/service/deregister/vm-{n}")
        counts["registrations"] += 1
        counts["api_errors"] += r.status not in (200, 404)
        if tick % 2 == 0:
            k = rng.randrange(50)
            double.apply(endpoint_slice(f"pod-{k}", "default",
                                        endpoints=[(f"10.244.{k}.{i}", rng.random() > 0.2) for i in range(1, 4)]))
            counts["k8s_events"] += 1
        if tick % 20 == 0:
            w = rng.choice([10, 50, 90])
            r = api(http, "PUT", "/v1/config", {"Kind": "service-splitter", "Name": "split-0", "Splits": [
                {"Weight": w, "Service": "svc-0"}, {"Weight": 100 - w, "Service": "svc-1"}]})
            counts["split_changes"] += 1
            counts["api_errors"] += r.status != 200
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--out", default=str(HERE / "results" / "soak.json"))
    args = ap.parse_args()
    work = HERE / "work"
    work.mkdir(parents=True, exist_ok=True)
    shape = make_catalog(work, 1000, 3)
    queries = query_files(work, 1000, shape["splits"])
    mix = work / "q-soak.txt"
    lines = queries["A"].read_text().splitlines()[:10000] + queries["SRV"].read_text().splitlines()[:5000] + \
        queries["split_A"].read_text().splitlines()[:5000]
    random.Random(3).shuffle(lines)
    mix.write_text("\n".join(lines) + "\n")

    with KubeDouble() as double:
        for k in range(50):
            double.apply(service(f"pod-{k}", "default"))
            double.apply(endpoint_slice(f"pod-{k}", "default", endpoints=[(f"10.244.{k}.{i}", True) for i in (1, 2, 3)]))
        kc = double.kubeconfig(work / "soak.kubeconfig", context="soak")
        cfg = work / "soak.toml"
        cfg.write_text(f'[[kubernetes]]\nname = "soak"\nkubeconfig = "{kc}"\n')
        port = free_port()
        proc = start_meshdns(work, port, core=0, name="soak", extra=("--config", str(cfg)))
        stop = threading.Event()
        try:
            wait_answering(port, "svc-0.service.consul")
            wait_answering(port, "pod-0.service.consul")
            http = None
            deadline = time.monotonic() + 10
            while http is None and time.monotonic() < deadline:
                for line in Path(proc.log).read_text().splitlines():
                    if line.startswith("meshdns ready ") and " http=" in line:
                        http = "http://" + line.split(" http=", 1)[1].strip()
                time.sleep(0.1)
            if http is None:
                raise RuntimeError("no 'meshdns ready' line with the HTTP address in the log")
            peak = dnsperf(port, mix, 5)["qps"]
            rate = int(peak * args.load)
            time.sleep(1)
            rss_start = proc.rss_mb()
            rtts: list[float] = []
            probe_lost = [0]
            counts = {"registrations": 0, "split_changes": 0, "k8s_events": 0, "api_errors": 0}
            threads = [threading.Thread(target=probe, args=(port, stop, rtts, probe_lost)),
                       threading.Thread(target=churn, args=(http, double, stop, counts))]
            for t in threads:
                t.start()
            rss_samples = []
            result = {}

            def load() -> None:
                result.update(dnsperf(port, mix, args.seconds, qps=rate))

            loader = threading.Thread(target=load)
            loader.start()
            t0 = time.monotonic()
            while loader.is_alive() and time.monotonic() - t0 < args.seconds + 90:
                rss_samples.append(round(proc.rss_mb(), 1))
                loader.join(5)
            stop.set()
            for t in threads:
                t.join(10)
            rss_end = proc.rss_mb()
        finally:
            stop.set()
            proc.stop()
    rtts.sort()
    sent = result.get("sent", 0)
    res = {
        "seconds": args.seconds, "peak_qps": round(peak), "target_qps": rate,
        "achieved_qps": round(result.get("qps", 0)), "queries_sent": sent,
        "queries_lost": result.get("lost", 0),
        "loss_percent": round(100.0 * result.get("lost", 0) / sent, 4) if sent else None,
        "probe_round_trips": len(rtts), "probe_lost": probe_lost[0],
        "probe_p50_ms": round(statistics.median(rtts) * 1000, 3) if rtts else None,
        "probe_p99_ms": round(rtts[int(len(rtts) * 0.99)] * 1000, 3) if rtts else None,
        "rss_mb_start": round(rss_start, 1), "rss_mb_end": round(rss_end, 1), "rss_mb_samples": rss_samples,
        **counts,
    }
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    ok = res["loss_percent"] is not None and res["loss_percent"] <= 0.1 and counts["api_errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
