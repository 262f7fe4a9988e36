"""Several real `meshdns serve` processes sharing one etcd cluster, for the HA tests.

Each replica has its own data dir (unused on etcd), the same zone files and
config; the set has a key prefix of its own, so sets can share a cluster.
Member TTL and store timeout are short (2 s) so failovers happen quickly;
every wait is still bounded generously.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from etcd_cluster import EtcdCluster
from harness import ServerProcess, api, wait_until

_sets = itertools.count()


class ReplicaSet:
    def __init__(self, tmp_path: Path, cluster: EtcdCluster, *, size: int = 3, member_ttl: int = 2,
                 timeout: str = "2s", extra: str = "", zones: Path | None = None):
        self.root = tmp_path / f"replicas{next(_sets)}"
        self.root.mkdir(parents=True)
        self.cluster = cluster
        self.prefix = f"/meshdns-{self.root.name}-{id(self) % 10_000}/"
        self.zones = zones or self.root / "zones"
        self.zones.mkdir(exist_ok=True)
        self.config = self.root / "meshdns.toml"
        endpoints = json.dumps(cluster.endpoints)
        self.config.write_text(f'node_name = "meshdns"\n{extra}\n[store]\nbackend = "etcd"\nendpoints = {endpoints}\n'
                               f'prefix = "{self.prefix}"\ntimeout = "{timeout}"\nmember_ttl = "{member_ttl}s"\n')
        self.procs: list[ServerProcess | None] = [None] * size

    def start(self, i: int, *, wrap: tuple[str, ...] = (), endpoints: list[str] | None = None,
              timeout: float = 60) -> ServerProcess:
        """Replica `i`; `wrap` runs it through a command (a network namespace), `endpoints` are etcd's as
        that replica reaches them."""
        config = self.config
        if endpoints is not None:
            config = self.root / f"meshdns{i}.toml"
            text = self.config.read_text()
            config.write_text(text.replace(f"endpoints = {json.dumps(self.cluster.endpoints)}",
                                           f"endpoints = {json.dumps(endpoints)}"))
        proc = ServerProcess("--config", str(config), "--zones", str(self.zones),
                             "--data-dir", str(self.root / f"data{i}"), wrap=wrap)
        self.procs[i] = proc.start(timeout)
        return proc

    def start_all(self) -> "ReplicaSet":
        for i in range(len(self.procs)):
            self.start(i)
        self.wait_members(len(self.procs))
        return self

    @property
    def live(self) -> list[ServerProcess]:
        return [p for p in self.procs if p is not None and p.proc.poll() is None]

    def address(self, proc: ServerProcess) -> str:
        return f"127.0.0.1:{proc.http_port}"

    def peers(self, proc: ServerProcess) -> list[str]:
        return api(proc.http, "GET", "/v1/status/peers").json()

    def leader(self, proc: ServerProcess) -> str:
        return api(proc.http, "GET", "/v1/status/leader").json()

    def wait_members(self, n: int, timeout: float = 60) -> str:
        """Every live replica sees the same `n` peers and the same leader, one of them; that leader."""
        def agreed():
            views = {(tuple(self.peers(p)), self.leader(p)) for p in self.live}
            if len(views) != 1:
                return False
            peers, leader = views.pop()
            return len(peers) == n and leader in peers and set(peers) == {self.address(p) for p in self.live} \
                and leader
        return wait_until(agreed, timeout, 0.1, what=f"{n} replicas agree on peers and leader")

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None:
                proc.kill()

    def logs(self) -> str:
        return "\n".join(f"== replica {i}\n{p.stderr()[-4000:]}" for i, p in enumerate(self.procs) if p is not None)


@pytest.fixture
def replica_sets(tmp_path):
    """Make replica sets on a cluster; every process is killed at the end (logs shown on failure)."""
    made: list[ReplicaSet] = []

    def make(cluster: EtcdCluster, **kwargs) -> ReplicaSet:
        rs = ReplicaSet(tmp_path, cluster, **kwargs)
        made.append(rs)
        return rs

    yield make
    for rs in made:
        rs.stop()
