#!/usr/bin/env python3
"""Answers that depend on who asks: throughput with same-zone answers and intention views on, against off.

    python tests/bench/views.py [--seconds 10] [--rounds 3] [--compare views|topology|topology-views]

bench.py's catalog (1000 services x 3 instances, here in zones a, b, c) plus four client workloads at
127.0.0.11-14 (web in a, api in b, batch in c, worker in a) and intentions entries for 50 services
that deny web: four client classes. Four dnsperf processes, one per client address (-a), send the A mix
together; meshdns is pinned to core 0 and dnsperf to core 1. Rounds alternate off and on; the best
round of each is reported (the least disturbed by other work), with the ratio on/off (target >= 0.85);
the order within a round alternates.
With --compare topology the same four clients measure the UI's topology counting (`[ui] topology`, on by
default) against it off (target >= 0.95); topology-views does the same with views on in both.
Not part of the test run. Needs dnsperf and taskset.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

from bench import free_port, make_catalog, query_files, start_meshdns, wait_answering  # noqa: E402

CLIENTS = {"127.0.0.11": ("web", "a"), "127.0.0.12": ("api", "b"), "127.0.0.13": ("batch", "c"),
           "127.0.0.14": ("worker", "a")}
ON = "[dns]\nprefer_same_zone = true\nenforce_intentions = true\n"
COMPARED = {  # what --compare measures: (config off, config on, target on/off)
    "views": ("[ui]\ntopology = false\n", "[ui]\ntopology = false\n" + ON, 0.85),
    "topology": ("[ui]\ntopology = false\n", "[ui]\ntopology = true\n", 0.95),
    "topology-views": ("[ui]\ntopology = false\n" + ON, "[ui]\ntopology = true\n" + ON, 0.95),
}


def estate(work: Path, services: int, instances: int) -> None:
    """Zones on bench.py's instances (the i-th instance of each service in zone "abc"[i % 3]), the client
    workloads and the intentions, in the zones directory."""
    make_catalog(work, services, instances)
    path = work / "zones" / "bench.toml"
    path.write_text(re.sub(r"port = (800(\d+))\n", lambda m: f'port = {m.group(1)}\nmeta = {{ zone = '
                           f'"{"abc"[int(m.group(2)) % 3]}" }}\n', path.read_text()))
    extra = [f'[[service]]\nname = "{name}"\naddress = "{ip}"\nport = 80\nmeta = {{ zone = "{zone}" }}\n'
             for ip, (name, zone) in CLIENTS.items()]
    extra += [f'[[intention]]\nname = "svc-{s}"\nsources = [ {{ name = "web", action = "deny" }}, '
              f'{{ name = "*", action = "allow" }} ]\n' for s in range(0, services, max(1, services // 50))]
    (work / "zones" / "views.toml").write_text("\n".join(extra))


def dnsperf_from(source: str, port: int, queries: Path, seconds: float) -> float:
    args = ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-a", source, "-d", str(queries),
            "-l", str(seconds), "-c", "2", "-q", "200", "-t", "2", "-S", "0"]
    with tempfile.TemporaryFile("w+") as sink:
        subprocess.run(args, stdout=sink, stderr=subprocess.STDOUT, timeout=seconds + 60)
        sink.seek(0)
        m = re.search(r"Queries per second:\s+([\d.]+)", sink.read())
    return float(m.group(1)) if m else 0.0


def round_qps(work: Path, config: Path, queries: Path, seconds: float) -> float:
    port = free_port()
    proc = start_meshdns(work, port, core=0, name="views", extra=("--config", str(config)))
    try:
        wait_answering(port, "svc-1.service.consul")
        with ThreadPoolExecutor(len(CLIENTS)) as pool:   # bounded: each dnsperf has its time limit
            return sum(pool.map(lambda s: dnsperf_from(s, port, queries, seconds), CLIENTS))
    finally:
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--compare", choices=sorted(COMPARED), default="views")
    ap.add_argument("--out", help="JSON file (default results/firecracker-2vcpu/<compare>.json)")
    args = ap.parse_args()
    out = Path(args.out or HERE / "results" / "firecracker-2vcpu" / f"{args.compare}.json")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    estate(work, args.services, args.instances)
    queries = query_files(work, args.services, 1)["A"]
    off_text, on_text, target = COMPARED[args.compare]
    configs = {"off": work / f"{args.compare}-off.toml", "on": work / f"{args.compare}-on.toml"}
    configs["off"].write_text(off_text)
    configs["on"].write_text(on_text)
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for n in range(args.rounds):   # the order alternates, so a drift in the machine favours neither side
        for side in (("off", "on") if n % 2 == 0 else ("on", "off")):
            runs[side].append(round_qps(work, configs[side], queries, args.seconds))
    best = {k: max(v) for k, v in runs.items()}
    ratio = best["on"] / best["off"] if best["off"] else 0.0
    print(f"A, 4 client classes, {args.compare}: off {best['off']:.0f} qps, on {best['on']:.0f} qps, "
          f"on/off {ratio:.2f} (target >= {target}); rounds off {runs['off']}, on {runs['on']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"compare": args.compare, "runs": runs, "best": best, "ratio": ratio,
                               "target": target}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
