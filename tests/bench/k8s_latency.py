#!/usr/bin/env python3
"""Kubernetes event -> DNS answer latency, and initial sync time, through the real
`kubernetes` client against the API server double (tests/kube_double.py).

    python tests/bench/k8s_latency.py [--services 2000] [--changes 50]
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

from harness import ServerThread, make_config, query, rrset_values  # noqa: E402
from kube_double import KubeDouble, endpoint_slice, service  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=2000)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--out", default=str(HERE / "results" / "k8s_latency.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="meshdns-k8s-bench-"))
    (tmp / "zones").mkdir()
    with KubeDouble() as double:
        for i in range(args.services):
            double.apply(service(f"svc-{i}", "default"))
            double.apply(endpoint_slice(f"svc-{i}", "default", endpoints=[(f"10.{i >> 8 & 255}.{i & 255}.{k}", True)
                                                                         for k in (1, 2, 3)]))
        kc = double.kubeconfig(tmp / "kc", context="bench")
        cfg = make_config(tmp, {"kubernetes": [{"name": "bench", "kubeconfig": str(kc)}]}, zones=tmp / "zones")
        t0 = time.monotonic()
        srv = ServerThread(cfg).start()
        try:
            source = srv.app.kubernetes[0]
            while not source.synced:
                time.sleep(0.005)
            sync_s = time.monotonic() - t0
            latencies = []
            for n in range(args.changes):
                ip = f"10.250.{n >> 8 & 255}.{n & 255}"
                started = time.monotonic()
                double.apply(endpoint_slice("svc-0", "default", endpoints=[(ip, True)]))
                while rrset_values(query(srv.dns_port, "svc-0.service.consul")) != [ip]:
                    pass
                latencies.append(time.monotonic() - started)
        finally:
            srv.stop()
    latencies.sort()
    res = {"services": args.services, "endpoints": args.services * 3, "initial_sync_s": round(sync_s, 2),
           "event_to_answer_ms_median": round(statistics.median(latencies) * 1000, 2),
           "event_to_answer_ms_max": round(latencies[-1] * 1000, 2), "changes": args.changes}
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
