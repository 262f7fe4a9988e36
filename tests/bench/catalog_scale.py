#!/usr/bin/env python3
"""Catalog scale figures: applying one change at 10,000 services, and start-up
time and memory at 100,000 instances.

    python tests/bench/catalog_scale.py [--services 10000] [--instances 100000]

Prints the figures and writes them as JSON next to the other results.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

from bench import free_port, start_meshdns, wait_answering  # noqa: E402
from meshdns.catalog.model import Health, Instance, SourceState  # noqa: E402
from meshdns.catalog.store import Store  # noqa: E402


def one_change(services: int, per: int = 3, rounds: int = 200) -> dict:
    store = Store(datacenter="dc1")
    state = {("dc1", f"svc-{s}"): tuple(Instance(f"svc-{s}-{i}", f"svc-{s}", "dc1", f"10.{s >> 8 & 255}.{s & 255}.{i}",
                                                 8000 + i) for i in range(per)) for s in range(services)}
    t0 = time.perf_counter()
    store.publish("k8s", SourceState(services=state))
    first = time.perf_counter() - t0
    rng = random.Random(1)
    hinted, diffed = [], []
    for r in range(rounds):
        key = ("dc1", f"svc-{rng.randrange(services)}")
        insts = state[key]
        flipped = (replace(insts[0], health=Health.CRITICAL if insts[0].health is Health.PASSING else Health.PASSING),)
        state = {**state, key: flipped + insts[1:]}
        t0 = time.perf_counter()
        if r % 2:
            store.publish("k8s", SourceState(services=state), changed={key})
            hinted.append(time.perf_counter() - t0)
        else:
            store.publish("k8s", SourceState(services=state))
            diffed.append(time.perf_counter() - t0)
    return {"services": services, "instances": services * per, "initial_load_ms": round(first * 1000, 1),
            "one_change_ms_with_key": round(statistics.median(hinted) * 1000, 3),
            "one_change_ms_p99_with_key": round(sorted(hinted)[int(len(hinted) * 0.99)] * 1000, 3),
            "one_change_ms_full_diff": round(statistics.median(diffed) * 1000, 3)}


def startup(instances: int, work: Path) -> dict:
    zones = work / "scale-zones"
    zones.mkdir(parents=True, exist_ok=True)
    for f in zones.iterdir():
        f.unlink()
    per = 5
    lines = []
    for n in range(instances):
        s = n // per
        lines.append(f'[[service]]\nname = "svc-{s}"\naddress = "10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"\n'
                     f'port = {8000 + n % per}\n')
    (zones / "scale.toml").write_text("\n".join(lines))
    port = free_port()
    t0 = time.monotonic()
    proc = start_meshdns(work, port, core=None, zones=zones, name="scale")
    try:
        wait_answering(port, f"svc-{instances // per - 1}.service.consul", timeout=120)
        elapsed = time.monotonic() - t0
        time.sleep(0.5)
        rss = proc.rss_mb()
    finally:
        proc.stop()
    return {"instances": instances, "services": instances // per, "startup_s": round(elapsed, 2),
            "rss_mb": round(rss, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--instances", type=int, default=100_000)
    ap.add_argument("--out", default=str(HERE / "results" / "catalog_scale.json"))
    args = ap.parse_args()
    work = HERE / "work"
    work.mkdir(parents=True, exist_ok=True)
    res = {"one_change": one_change(args.services), "startup": startup(args.instances, work)}
    print(json.dumps(res, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
