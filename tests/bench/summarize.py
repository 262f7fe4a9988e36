#!/usr/bin/env python3
"""Medians over several bench.py runs: one JSON summary, as quoted in the README.

    python tests/bench/summarize.py results/<machine>/run*.json > results/<machine>/summary.json

One run of bench.py is noisy on a shared machine; the figures worth quoting
are the medians over runs, with every run's value kept beside them.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def summarize(runs: list[dict]) -> dict:
    first = runs[0]
    out = {"machine": first["machine"], "catalog": first["catalog"], "runs": len(runs), "mixes": {}}
    for mix in first["mixes"]:
        per = [r["mixes"][mix] for r in runs if mix in r["mixes"]]
        ref = per[0]["reference"]

        def col(server: str, *path: str) -> list:
            values = []
            for p in per:
                v = p[server]
                for key in path:
                    v = v.get(key) if isinstance(v, dict) else None
                values.append(v if v is not None else 0)
            return values

        mesh_p99 = col("meshdns", "at_half_load", "p99_latency_ms")
        ref_p99 = col(ref, "at_half_load", "p99_latency_ms")
        out["mixes"][mix] = {
            "reference": ref,
            "ratio_median": statistics.median(p["ratio"] for p in per),
            "ratios": [p["ratio"] for p in per],
            "meshdns_qps_median": round(statistics.median(col("meshdns", "max", "qps"))),
            "reference_qps_median": round(statistics.median(col(ref, "max", "qps"))),
            "meshdns_p99_ms_at_half_load_median": round(statistics.median(mesh_p99), 3),
            "meshdns_p99_ms_at_half_load": [round(v, 3) for v in mesh_p99],
            "reference_p99_ms_at_half_load_median": round(statistics.median(ref_p99), 3),
            "reference_p99_ms_at_half_load": [round(v, 3) for v in ref_p99],
            "meshdns_lost": [a + b for a, b in zip(col("meshdns", "max", "lost"),
                                                   col("meshdns", "at_half_load", "lost"))],
        }
    return out


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    runs = [json.loads(Path(p).read_text()) for p in sys.argv[1:]]
    print(json.dumps(summarize(runs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
