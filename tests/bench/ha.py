#!/usr/bin/env python3
"""Three meshdns replicas on etcd beside one meshdns on SQLite, in the same run.

    python tests/bench/ha.py [--latency 300] [--writes 3000] [--clients 16]
                             [--services 10000] [--instances 3] [--seconds 10]

Starts one `meshdns serve` on SQLite, then three etcd members
(tests/etcd_cluster.py, with fsync and the shipped compaction and quota flags)
and three `meshdns serve` replicas with `[store] backend = "etcd"`, and
measures, each side on the same work:

- a registration answered over DNS: through replica A, by replica B (from the
  200 and from the request), beside the SQLite server answering its own;
- registrations per second with concurrent clients, through one replica and
  through three, beside the SQLite server;
- the catalog of `services` x `instances` read by a replica started afterwards
  (seconds to /readyz and to the last service answering), beside the SQLite
  server restarted on the same catalog; RSS of every process;
- DNS throughput of a replica beside the SQLite server (dnsperf with
  bench.py's helpers, when dnsperf and taskset are installed).

Prints each figure and writes them as JSON (default tests/bench/results/ha.json).
Everything runs on 127.0.0.1; every phase has a count and a time limit. The
SQLite side runs on any meshdns; the etcd side needs a server that reads the
[store] table, and stops with a message saying so (keeping what was measured)
on one that does not.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from bench import _cpu, dnsperf, free_port, rss_mb  # noqa: E402
from etcd_cluster import NO_ETCD, EtcdCluster, etcd_binary  # noqa: E402
from harness import ServerProcess  # noqa: E402

PHASE_LIMIT = 600.0   # seconds any one phase may take
SHIPPED_ETCD_FLAGS = ["--auto-compaction-mode=periodic", "--auto-compaction-retention=10m",
                      "--quota-backend-bytes=1073741824"]   # deploy/kubernetes/etcd, deploy/vm/etcd.env


class StoreNotWired(RuntimeError):
    """The meshdns under test does not read the [store] table."""


class FsyncCluster(EtcdCluster):
    """The test cluster as deployed: fsync on, the shipped compaction and quota flags."""

    def _configure(self, attempt: int) -> None:
        super()._configure(attempt)
        for member in self.members:
            member.args = [a for a in member.args if a != "--unsafe-no-fsync"] + SHIPPED_ETCD_FLAGS


# -- helpers --------------------------------------------------------------------


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 3) if ordered else 0.0


def summary(values: list[float]) -> dict:
    return {"count": len(values), "p50_ms": ms(values, 0.5), "p99_ms": ms(values, 0.99), "max_ms": ms(values, 1.0)}


def dns_query(name: str, qid: int) -> bytes:
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + b"".join(
        bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"


def answers(sock: socket.socket, port: int, name: str, addresses: list[str], qid: int) -> bool:
    """One A query; True when the reply (NOERROR) holds every address."""
    sock.sendto(dns_query(name, qid), ("127.0.0.1", port))
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65535)
        except socket.timeout:
            return False
        if data[:2] == struct.pack("!H", qid):
            return data[3] & 0xF == 0 and all(socket.inet_aton(a) in data for a in addresses)
    return False


def wait_answered(port: int, name: str, addresses: list[str], timeout: float) -> float | None:
    """Seconds until `name` answers with `addresses` (a tight loop, bounded), None when it never does."""
    start = time.perf_counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        qid = random.randrange(1 << 16)
        while time.perf_counter() - start < timeout:
            qid = (qid + 1) & 0xFFFF
            if answers(sock, port, name, addresses, qid):
                return time.perf_counter() - start
    return None


def wait_ready(server: ServerProcess, timeout: float = PHASE_LIMIT) -> float:
    """Seconds until /readyz answers 200 (every source synced, the store read)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(server.http + "/readyz", timeout=5) as reply:
                if reply.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        if server.proc.poll() is not None:
            raise RuntimeError(f"meshdns exited:\n{server.stderr()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"meshdns not ready within {timeout} s:\n{server.stderr()[-3000:]}")


def instance(name: str, n: int, index: int = 0) -> dict:
    return {"Name": name, "ID": f"{name}-{index}", "Address": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
            "Port": 8000 + index}


# -- servers ----------------------------------------------------------------------


def start_server(work: Path, name: str, store: dict | None = None) -> ServerProcess:
    """`meshdns serve` on an empty zones directory; with `store`, its [store] table (advertise added)."""
    zones = work / "zones"
    zones.mkdir(exist_ok=True)
    http = free_port()
    args = ["--zones", str(zones), "--data-dir", str(work / f"{name}-data"), "--http", f"127.0.0.1:{http}",
            "--log-level", "warning"]
    if store is not None:
        config = work / f"{name}.toml"
        config.write_text(toml_store({**store, "advertise": f"127.0.0.1:{http}"}))
        args += ["--config", str(config)]
    return ServerProcess(*args).start(timeout=60)


def toml_store(store: dict) -> str:
    lines = ["[store]"] + [f"{k} = {json.dumps(v)}" for k, v in store.items()]
    return "\n".join(lines) + "\n"


def check_store_is_wired(store: dict) -> None:
    from meshdns.config import ConfigError, parse_config
    try:
        parse_config(tomllib.loads(toml_store(store)))
    except ConfigError as exc:
        raise StoreNotWired(f"this meshdns does not read the [store] table ({exc}): `meshdns serve` cannot run "
                            "on etcd yet, so only the SQLite side was measured") from None


# -- measurements -----------------------------------------------------------------


def replication(write: ServerProcess, read: ServerProcess, count: int, prefix: str) -> dict:
    """Each registration through `write`, then `read` polled over DNS until it answers it."""
    conn = http.client.HTTPConnection("127.0.0.1", write.http_port, timeout=30)
    from_ack, from_request, missed, statuses = [], [], 0, Counter()
    try:
        for i in range(count):
            body = instance(f"{prefix}-{i}", 0xFA0000 + i)
            t0 = time.perf_counter()
            conn.request("PUT", "/v1/agent/service/register", body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            acked = time.perf_counter()
            statuses[reply.status] += 1
            if reply.status != 200:
                continue
            seen = wait_answered(read.dns_port, f"{body['Name']}.service.consul", [body["Address"]], 5.0)
            if seen is None:
                missed += 1
                continue
            from_ack.append(seen)
            from_request.append(acked - t0 + seen)
    finally:
        conn.close()
    return {"from_200": summary(from_ack), "from_request": summary(from_request), "not_answered_within_5s": missed,
            "statuses": dict(statuses)}


async def _register_all(bases: list[str], bodies: list[dict], clients: int) -> dict:
    import aiohttp
    work = iter(bodies)
    latencies: list[float] = []
    errors: Counter = Counter()
    deadline = time.monotonic() + PHASE_LIMIT
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        async def client(k: int) -> None:
            url = bases[k % len(bases)] + "/v1/agent/service/register"
            for body in work:
                if time.monotonic() > deadline:
                    errors["phase time limit"] += 1
                    return
                t0 = time.perf_counter()
                try:
                    async with session.put(url, json=body) as reply:
                        await reply.read()
                        if reply.status != 200:
                            errors[str(reply.status)] += 1
                            continue
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        start = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.monotonic() - start
    return {"registrations": len(latencies), "seconds": round(elapsed, 3),
            "per_second": round(len(latencies) / elapsed, 1), "clients": clients, "servers": len(bases),
            "latency": summary(latencies), "errors": dict(errors)}


def register_all(servers: list[ServerProcess], bodies: list[dict], clients: int) -> dict:
    """Every body registered once, `clients` at a time, spread over `servers`."""
    return asyncio.run(_register_all([s.http for s in servers], bodies, clients))


def catalog(services: int, instances: int) -> list[dict]:
    return [instance(f"svc-{s}", s * instances + i, i) for s in range(services) for i in range(instances)]


def last_service(services: int, instances: int) -> tuple[str, list[str]]:
    bodies = catalog(services, instances)[-instances:]
    return f"{bodies[0]['Name']}.service.consul", [b["Address"] for b in bodies]


def start_and_sync(work: Path, name: str, services: int, instances: int, store: dict | None = None) -> tuple:
    """A server started on a store that already holds the catalog: seconds to ready and to answering."""
    target, addresses = last_service(services, instances)
    t0 = time.monotonic()
    server = start_server(work, name, store)
    listening = time.monotonic() - t0
    ready = listening + wait_ready(server)
    answered = wait_answered(server.dns_port, target, addresses, PHASE_LIMIT)
    figures = {"listening_s": round(listening, 3), "ready_s": round(ready, 3),
               "answering_s": round(time.monotonic() - t0, 3) if answered is not None else None}
    time.sleep(1.0)
    figures["rss_mb"] = round(rss_mb(server.proc.pid), 1)
    return server, figures


def dns_throughput(server: ServerProcess, work: Path, services: int, seconds: float) -> dict:
    """dnsperf's maximum (bench.py: dnsperf on core 1) with the server pinned to core 0."""
    missing = [tool for tool in ("dnsperf", "taskset") if shutil.which(tool) is None]
    if missing:
        return {"skipped": f"not installed: {', '.join(missing)}"}
    rng = random.Random(42)
    queries = work / "ha-queries.txt"
    queries.write_text("".join(f"svc-{rng.randrange(services)}.service.consul A\n" for _ in range(20000)))
    subprocess.run(["taskset", "-a", "-p", "-c", "0", str(server.proc.pid)], check=True, capture_output=True)
    try:
        return dnsperf(server.dns_port, queries, seconds)
    finally:
        cores = f"0-{(os.cpu_count() or 1) - 1}"
        subprocess.run(["taskset", "-a", "-p", "-c", cores, str(server.proc.pid)], capture_output=True)


def rss(servers: dict[str, ServerProcess]) -> dict[str, float]:
    return {name: round(rss_mb(s.proc.pid), 1) for name, s in servers.items()}


# -- the run -----------------------------------------------------------------------


def sqlite_side(work: Path, args, results: dict) -> None:
    out = results["sqlite"] = {}
    server = start_server(work, "sqlite")
    try:
        wait_ready(server)
        out["registration_answered"] = replication(server, server, args.latency, "lat")
        print(f"sqlite: registration answered by the same server {out['registration_answered']['from_200']}",
              flush=True)
        out["writes_first"] = register_all([server], [instance(f"tp1-{i}", i) for i in range(args.writes)],
                                           args.clients)
        out["writes_second"] = register_all([server], [instance(f"tp3-{i}", i) for i in range(args.writes)],
                                            args.clients)
        print(f"sqlite: {out['writes_first']['per_second']} and {out['writes_second']['per_second']}"
              " registrations/s", flush=True)
        out["catalog_load"] = register_all([server], catalog(args.services, args.instances), args.clients)
    finally:
        server.stop()
    restarted, out["restart"] = start_and_sync(work, "sqlite", args.services, args.instances)
    try:
        print(f"sqlite: restarted on {args.services}x{args.instances}: {out['restart']}", flush=True)
        out["dns"] = dns_throughput(restarted, work, args.services, args.seconds)
        print(f"sqlite: DNS {out['dns']}", flush=True)
    finally:
        restarted.stop()


def etcd_side(work: Path, args, results: dict) -> None:
    out = results["etcd"] = {}
    binary = etcd_binary()
    if binary is None:
        raise RuntimeError(NO_ETCD)
    t0 = time.monotonic()
    cluster = FsyncCluster(work / "etcd-cluster", binary=binary).start()
    servers: dict[str, ServerProcess] = {}
    try:
        out["etcd_version"] = ".".join(map(str, cluster.version))
        out["etcd_cluster_start_s"] = round(time.monotonic() - t0, 3)
        print(f"etcd: 3 members healthy in {out['etcd_cluster_start_s']} s", flush=True)
        store = {"backend": "etcd", "endpoints": cluster.endpoints, "prefix": "/meshdns/", "timeout": "5s",
                 "member_ttl": "10s"}
        check_store_is_wired(store)
        for name in ("a", "b", "c"):
            servers[name] = start_server(work, f"replica-{name}", store)
        for server in servers.values():
            wait_ready(server)
        a, b, c = servers["a"], servers["b"], servers["c"]
        out["registration_answered_by_another_replica"] = replication(a, b, args.latency, "lat")
        print(f"etcd: through A, answered by B {out['registration_answered_by_another_replica']['from_200']}",
              flush=True)
        out["writes_through_one"] = register_all([a], [instance(f"tp1-{i}", i) for i in range(args.writes)],
                                                 args.clients)
        out["writes_through_three"] = register_all([a, b, c], [instance(f"tp3-{i}", i) for i in range(args.writes)],
                                                   args.clients)
        print(f"etcd: {out['writes_through_one']['per_second']} registrations/s through one replica, "
              f"{out['writes_through_three']['per_second']} through three", flush=True)
        out["catalog_load"] = register_all([a, b, c], catalog(args.services, args.instances), args.clients)
        target, addresses = last_service(args.services, args.instances)
        for name, server in servers.items():
            if wait_answered(server.dns_port, target, addresses, PHASE_LIMIT) is None:
                raise RuntimeError(f"replica {name} never answered {target}")
        status = cluster.status(0) or {}
        out["etcd_db_size_mb"] = round(int(status.get("dbSize", 0)) / 2**20, 1)
        out["etcd_db_in_use_mb"] = round(int(status.get("dbSizeInUse", 0)) / 2**20, 1)
        servers["d"], out["new_replica"] = start_and_sync(work, "replica-d", args.services, args.instances, store)
        print(f"etcd: new replica on {args.services}x{args.instances}: {out['new_replica']}", flush=True)
        out["rss_mb"] = rss(servers)
        out["dns"] = dns_throughput(servers["a"], work, args.services, args.seconds)
        print(f"etcd: DNS on replica A {out['dns']}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=int, default=300, help="registrations timed until another replica answers")
    ap.add_argument("--writes", type=int, default=3000, help="registrations per throughput run")
    ap.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10, help="dnsperf run length")
    ap.add_argument("--out", default=str(HERE / "results" / "ha.json"))
    args = ap.parse_args()
    results: dict = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                                 "kernel": platform.release()},
                     "parameters": {k: v for k, v in vars(args).items() if k != "out"}}
    status = 0
    with tempfile.TemporaryDirectory(prefix="meshdns-ha-bench-") as tmp:
        work = Path(tmp)
        try:
            sqlite_side(work, args, results)
            etcd_side(work, args, results)
        except StoreNotWired as exc:
            results["etcd"]["not_measured"] = str(exc)
            print(f"ha.py: {exc}", file=sys.stderr)
            status = 3
        finally:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"written {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
