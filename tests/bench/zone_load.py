#!/usr/bin/env python3
"""Load time of one RFC 1035 master file: parse alone, and parse + publish into a catalog store.

    python tests/bench/zone_load.py [--records 10000] [--runs 5]

The zone has a mix of A, AAAA, CNAME, MX, TXT and SRV records, some continued
over parentheses; prints the median and best of `runs` loads.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from meshdns.catalog.store import Store  # noqa: E402
from meshdns.sources.zonefiles import parse_master  # noqa: E402
from meshdns.sources.zones import ZonesSource  # noqa: E402


def zone_text(records: int) -> str:
    lines = ["$ORIGIN bench.test.", "$TTL 300",
             "@ IN SOA ns1 hostmaster (", "    2026010101 ; serial", "    3600 600 86400 60 )", "@ IN NS ns1",
             "ns1 IN A 192.0.2.1"]
    kinds = [
        lambda i: f"host{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
        lambda i: f"host{i} IN AAAA fd00::{i:x}",
        lambda i: f"alias{i} 60 IN CNAME host{i}",
        lambda i: f"mail{i} IN MX 10 host{i}.bench.test.",
        lambda i: f'txt{i} IN TXT "v=spf1 ip4:10.0.0.{i & 255} -all" "part two"',
        lambda i: f"_svc{i}._tcp IN SRV ( 0 5 {1024 + i % 60000}\n        host{i} )",
    ]
    lines += [kinds[i % len(kinds)](i) for i in range(records - 3)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    text = zone_text(args.records)
    parse, load = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.test.zone"
        path.write_text(text)
        for _ in range(args.runs):
            t0 = time.perf_counter()
            zone = parse_master(str(path), text, default_origin="bench.test.", source="zones")
            parse.append(time.perf_counter() - t0)
            store = Store(datacenter="dc1")
            t0 = time.perf_counter()
            ZonesSource(tmp, store, datacenter="dc1").reload()
            load.append(time.perf_counter() - t0)
    assert len(zone.records) >= args.records - 10, len(zone.records)
    print(f"{len(zone.records)} records: parse median {statistics.median(parse) * 1000:.0f} ms "
          f"(best {min(parse) * 1000:.0f} ms); parse + publish median {statistics.median(load) * 1000:.0f} ms "
          f"(best {min(load) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
