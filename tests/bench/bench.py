#!/usr/bin/env python3
"""meshdns beside a reference server, on the same data, in the same run.

    python tests/bench/bench.py [--services 1000] [--instances 3] [--seconds 10]

Generates a synthetic catalog, serves it from meshdns and from Knot DNS
(knotd, a zone file with the same records), and drives each with dnsperf on
the same query mixes. Servers are pinned to core 0, dnsperf to core 1. For the
cached-forwarding mix, both meshdns and unbound forward to a second knotd and
are measured with warm caches. Prints qps, average and p99 latency per mix and
the ratio meshdns/reference; writes the figures as JSON.

Everything talks to 127.0.0.1 only, and every load has a time limit.
Needs: knot, dnsperf, unbound (Debian packages), util-linux taskset.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NEEDED = {"knotd": "knot", "dnsperf": "dnsperf", "unbound": "unbound", "taskset": "util-linux"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        for _ in range(50):
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
                return port
            except OSError:
                u.close()
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raise RuntimeError("no free port")


def hexip(ip: str) -> str:
    return ipaddress.ip_address(ip).packed.hex()


# ---------------------------------------------------------------------------
# data


def make_catalog(work: Path, services: int, instances: int) -> dict:
    zones = work / "zones"
    zones.mkdir(parents=True, exist_ok=True)
    for old in zones.iterdir():
        old.unlink()
    toml, knot = [], []
    knot.append("$ORIGIN consul.\n$TTL 0\n@ 0 IN SOA ns.consul. hostmaster.consul. 1 3600 600 86400 0\n"
                "@ 0 IN NS ns.consul.\nns 0 IN A 127.0.0.1\n")
    addrs = {}
    for s in range(services):
        ips = []
        for i in range(instances):
            n = s * instances + i
            ip = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
            ips.append(ip)
            toml.append(f'[[service]]\nname = "svc-{s}"\naddress = "{ip}"\nport = {8000 + i}\n')
            knot.append(f"svc-{s}.service 0 IN A {ip}\n")
            knot.append(f"svc-{s}.service 0 IN SRV 1 1 {8000 + i} {hexip(ip)}.addr.dc1.consul.\n")
            knot.append(f"{hexip(ip)}.addr.dc1 0 IN A {ip}\n")
        addrs[s] = ips
    splits = max(1, services // 10)
    for k in range(splits):
        a, b = (2 * k) % services, (2 * k + 1) % services
        toml.append(f'[[split]]\nname = "split-{k}"\ntargets = [{{ service = "svc-{a}", weight = 90 }}, '
                    f'{{ service = "svc-{b}", weight = 10 }}]\n')
        for ip in addrs[a]:  # the reference serves the majority side, statically
            knot.append(f"split-{k}.service 0 IN A {ip}\n")
    (zones / "bench.toml").write_text("\n".join(toml))
    (work / "consul.zone").write_text("".join(knot))
    # a zone behind the forwarders, for the cached-forwarding mix
    fwd = ["$ORIGIN fwd.test.\n$TTL 3600\n@ IN SOA ns.fwd.test. hostmaster.fwd.test. 1 3600 600 86400 3600\n"
           "@ IN NS ns.fwd.test.\nns IN A 127.0.0.1\n"]
    fwd += [f"host-{i} IN A 10.200.{i >> 8 & 255}.{i & 255}\n" for i in range(1000)]
    (work / "fwd.test.zone").write_text("".join(fwd))
    return {"services": services, "instances": instances, "splits": splits}


def query_files(work: Path, services: int, splits: int, count: int = 20000) -> dict[str, Path]:
    rng = random.Random(42)
    mixes = {
        "A": lambda: f"svc-{rng.randrange(services)}.service.consul A",
        "SRV": lambda: f"svc-{rng.randrange(services)}.service.consul SRV",
        "split_A": lambda: f"split-{rng.randrange(splits)}.service.consul A",
        "NXDOMAIN": lambda: f"nx-{rng.randrange(1_000_000)}.service.consul A",
        "cached_forward": lambda: f"host-{rng.randrange(1000)}.fwd.test A",
    }
    out = {}
    for name, gen in mixes.items():
        path = work / f"q-{name}.txt"
        path.write_text("\n".join(gen() for _ in range(count)) + "\n")
        out[name] = path
    return out


# ---------------------------------------------------------------------------
# servers


class Proc:
    def __init__(self, name: str, args: list[str], *, core: int | None, cwd: Path = ROOT, log: Path):
        self.name = name
        cmd = (["taskset", "-c", str(core)] if core is not None else []) + args
        self.log = log
        self.p = subprocess.Popen(cmd, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def rss_mb(self) -> float:
        return rss_mb(self.p.pid)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)


def rss_mb(pid: int) -> float:
    """Resident memory of one process, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_answering(port: int, name: str, timeout: float = 60.0) -> float:
    """Seconds until the server answers `name` (used for start-up time too)."""
    import struct
    q = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"".join(
        bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\x00\x00\x01\x00\x01"
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() - start < timeout:
            s.sendto(q, ("127.0.0.1", port))
            try:
                data = s.recv(4096)
                if data[3] & 0xF == 0 and data[6:8] != b"\x00\x00":
                    return time.monotonic() - start
            except (socket.timeout, ConnectionRefusedError):
                pass
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered {name} on port {port} within {timeout}s")


def start_knot(work: Path, zones: dict[str, Path], port: int, tag: str, core: int | None) -> Proc:
    run = work / f"knot-{tag}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir()
    conf = [f"server:\n    rundir: {run}\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n"
            f"    tcp-workers: 1\n    background-workers: 1\n",
            f"database:\n    storage: {run}\n", "log:\n  - target: stderr\n    any: warning\n",
            "template:\n  - id: default\n    storage: " + str(work) + "\n    semantic-checks: off\n"
            "    zonefile-sync: -1\n    journal-content: none\n", "zone:\n"]
    conf += [f"  - domain: {origin}\n    file: {path}\n" for origin, path in zones.items()]
    (run / "knot.conf").write_text("".join(conf))
    return Proc(f"knotd-{tag}", ["knotd", "-c", str(run / "knot.conf")], core=core, log=run / "log")


def start_meshdns(work: Path, port: int, *, core: int | None, recursor: int | None = None,
                  workers: int = 1, zones: Path | None = None, name: str = "meshdns",
                  extra: tuple[str, ...] = ()) -> Proc:
    args = [sys.executable, "-m", "meshdns", "serve", "--zones", str(zones or work / "zones"), "--dns",
            f"127.0.0.1:{port}", "--http", "127.0.0.1:0", "--data-dir", str(work / f"{name}-data"),
            "--log-level", "warning", "--workers", str(workers), *extra]
    if recursor:
        args += ["--recursor", f"127.0.0.1:{recursor}"]
    return Proc(name, args, core=core, log=work / f"{name}.log")


def start_unbound(work: Path, port: int, upstream: int, core: int | None) -> Proc:
    conf = work / "unbound.conf"
    conf.write_text(f"""server:
    interface: 127.0.0.1@{port}
    port: {port}
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{work}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    num-threads: 1
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    domain-insecure: "fwd.test"
    local-zone: "test." nodefault
    msg-cache-size: 64m
    rrset-cache-size: 64m
    prefetch: no
    minimal-responses: yes
remote-control:
    control-enable: no
forward-zone:
    name: "fwd.test"
    forward-addr: 127.0.0.1@{upstream}
""")
    return Proc("unbound", ["unbound", "-d", "-c", str(conf)], core=core, log=work / "unbound.log")


# ---------------------------------------------------------------------------
# load


def dnsperf(port: int, queries: Path, seconds: float, *, qps: int = 0, clients: int = 8,
            verbose: bool = False) -> dict:
    args = ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
            "-l", str(seconds), "-c", str(clients), "-q", "500", "-t", "2", "-S", "0"]
    if qps:
        args += ["-Q", str(qps)]
    if verbose:
        args += ["-v"]
    # dnsperf writes to a file, not a pipe: reading -v output while it runs would put this
    # process on the cores being measured
    with tempfile.TemporaryFile("w+") as sink:
        subprocess.run(args, stdout=sink, stderr=subprocess.STDOUT, timeout=seconds + 60)
        sink.seek(0)
        out = sink.read()

    def num(label: str) -> float:
        m = re.search(label + r"\s+([\d.]+)", out)
        return float(m.group(1)) if m else 0.0

    res = {
        "sent": int(num(r"Queries sent:")),
        "completed": int(num(r"Queries completed:")),
        "lost": int(num(r"Queries lost:")),
        "qps": num(r"Queries per second:"),
        "avg_latency_ms": num(r"Average Latency \(s\):") * 1000,
    }
    if verbose:
        lat = sorted(float(m.group(1)) for m in re.finditer(r"^> \S+ .* ([\d.]+)$", out, re.M))
        if lat:
            res["p99_latency_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
            res["p50_latency_ms"] = statistics.median(lat) * 1000
    return res


def measure(port: int, queries: Path, seconds: float, *, half_runs: int = 3) -> dict:
    """Maximum qps, then latency at half of it: `half_runs` runs, the median p99 reported."""
    full = dnsperf(port, queries, seconds)
    runs = [dnsperf(port, queries, seconds, qps=max(100, int(full["qps"] / 2)), verbose=True)
            for _ in range(half_runs)]
    keys = ("qps", "p50_latency_ms", "p99_latency_ms", "avg_latency_ms")
    half = {k: statistics.median(r.get(k) or 0 for r in runs) for k in keys}
    half["lost"] = sum(r.get("lost") or 0 for r in runs)
    half["p99_latency_ms_runs"] = [round(r.get("p99_latency_ms") or 0, 3) for r in runs]
    return {"max": full, "at_half_load": half}


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--mixes", default="A,SRV,split_A,NXDOMAIN,cached_forward")
    ap.add_argument("--half-runs", type=int, default=3, help="latency runs at half load (median p99 reported)")
    ap.add_argument("--workers", type=int, default=1, help="meshdns --workers (pinning is skipped when > 1)")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    ap.add_argument("--work", default=str(HERE / "work"))
    args = ap.parse_args()

    missing = [f"{tool} (apt-get install {pkg})" for tool, pkg in NEEDED.items() if shutil.which(tool) is None]
    if missing:
        print("missing: " + ", ".join(missing), file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores: servers on core 0, dnsperf on core 1", file=sys.stderr)
        return 2

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shape = make_catalog(work, args.services, args.instances)
    queries = query_files(work, args.services, shape["splits"])
    mixes = [m for m in args.mixes.split(",") if m]
    core = 0 if args.workers == 1 else None
    results: dict = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                                 "kernel": platform.release()},
                     "catalog": shape, "seconds": args.seconds, "mixes": {}}
    procs: list[Proc] = []
    try:
        upstream_port, knot_port, mesh_port, unbound_port = free_port(), free_port(), free_port(), free_port()
        # the authoritative upstream for cached_forward runs unpinned: warm caches never reach it
        upstream = start_knot(work, {"fwd.test.": work / "fwd.test.zone"}, upstream_port, "upstream", None)
        procs.append(upstream)
        wait_answering(upstream_port, "host-1.fwd.test")

        knot = start_knot(work, {"consul.": work / "consul.zone"}, knot_port, "ref", core)
        procs.append(knot)
        wait_answering(knot_port, "svc-0.service.consul")
        mesh = start_meshdns(work, mesh_port, core=core, recursor=upstream_port, workers=args.workers)
        procs.append(mesh)
        results["meshdns_startup_s"] = round(wait_answering(mesh_port, "svc-0.service.consul"), 3)
        results["meshdns_rss_mb_start"] = round(mesh.rss_mb(), 1)
        unbound = start_unbound(work, unbound_port, upstream_port, core)
        procs.append(unbound)
        wait_answering(unbound_port, "host-1.fwd.test")

        for mix in mixes:
            ref_name, ref_port = ("unbound", unbound_port) if mix == "cached_forward" else ("knotd", knot_port)
            if mix == "cached_forward":  # warm both caches with every name first
                for port in (mesh_port, unbound_port):
                    dnsperf(port, queries[mix], 3, qps=5000)
            print(f"== {mix}: meshdns", flush=True)
            m = measure(mesh_port, queries[mix], args.seconds, half_runs=args.half_runs)
            print(f"== {mix}: {ref_name}", flush=True)
            r = measure(ref_port, queries[mix], args.seconds, half_runs=args.half_runs)
            ratio = m["max"]["qps"] / r["max"]["qps"] if r["max"]["qps"] else 0.0
            results["mixes"][mix] = {"meshdns": m, ref_name: r, "reference": ref_name, "ratio": round(ratio, 3)}
            _print_row(mix, ref_name, m, r, ratio)
        results["meshdns_rss_mb_end"] = round(mesh.rss_mb(), 1)
    finally:
        for p in reversed(procs):
            p.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _print_row(mix: str, ref: str, m: dict, r: dict, ratio: float) -> None:
    def fmt(d: dict) -> str:
        half = d["at_half_load"]
        return (f"{d['max']['qps']:>9.0f} qps  avg {d['max']['avg_latency_ms']:.3f} ms  "
                f"p99@50% {half.get('p99_latency_ms') or 0:.3f} ms {half.get('p99_latency_ms_runs', [])}  "
                f"lost {d['max']['lost']}+{half.get('lost') or 0}")
    print(f"{mix:<15} meshdns {fmt(m)}")
    print(f"{'':<15} {ref:<7} {fmt(r)}")
    print(f"{'':<15} ratio meshdns/{ref} = {ratio:.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
