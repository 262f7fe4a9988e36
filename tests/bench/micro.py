#!/usr/bin/env python3
"""Microseconds per answer inside one process, no sockets: the handler alone.

    python tests/bench/micro.py [--rounds 5] [--queries 20000]

The catalog and query mixes are bench.py's (1000 services x 3 instances, 100
splits); queries are sent as dnsperf sends them (no EDNS, RD set, a new ID each).
The cached-forward mix is warmed from a scripted upstream on 127.0.0.1 first.
Prints the best of `rounds` runs per mix (the least disturbed by other work).
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]

import dns.message  # noqa: E402

from bench import make_catalog, query_files  # noqa: E402
from harness import make_config  # noqa: E402
from upstream import Upstream  # noqa: E402
from meshdns.app import make_handler  # noqa: E402
from meshdns.catalog.store import Store  # noqa: E402
from meshdns.sources.zones import ZonesSource  # noqa: E402

CLIENT = ("127.0.0.1", 40000)


def packets(path: Path, count: int) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for line in path.read_text().split("\n")[:count]:
        if line:
            name, qtype = line.split()
            out.append(dns.message.make_query(name, qtype, use_edns=False, id=rng.randrange(65536)).to_wire())
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=20000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meshdns-micro-"))
    shape = make_catalog(work, 1000, 3)
    files = query_files(work, 1000, shape["splits"], count=args.queries)
    up = Upstream().start()
    try:
        for i in range(1000):
            up.add(f"host-{i}.fwd.test", "A", f"10.200.{i >> 8 & 255}.{i & 255}", ttl=3600)
        cfg = make_config(work, {"forwarding": {"recursors": [f"127.0.0.1:{up.port}"]}}, zones=work / "zones")
        store = Store(datacenter="dc1")
        ZonesSource(work / "zones", store, datacenter="dc1").reload()
        handler, _ = make_handler(cfg, store)
        mixes = {name: packets(path, args.queries) for name, path in files.items()}

        async def warm() -> None:
            for wire in mixes["cached_forward"]:
                reply = handler.handle(wire, CLIENT, tcp=False)
                if not isinstance(reply, (bytes, type(None))):
                    await reply
        asyncio.run(warm())
        handle = handler.handle
        for name, wires in mixes.items():
            best = float("inf")
            for _ in range(args.rounds):
                started = time.perf_counter()
                for wire in wires:
                    handle(wire, CLIENT, tcp=False)
                best = min(best, time.perf_counter() - started)
            assert all(isinstance(handle(w, CLIENT, tcp=False), bytes) for w in wires[:100])
            print(f"{name:<15} {best / len(wires) * 1e6:6.2f} us/answer")
    finally:
        up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
