"""A real etcd cluster on loopback for the store tests.

Members run the etcd that tests/etcd/build.sh builds into the cache (Debian's
`etcd` on PATH is the fallback), each in its own data dir with free ports.
Helpers kill -9 / restart (same arguments) / SIGSTOP / SIGCONT a member, find
the leader and compact, all through etcd's JSON gateway so the tests need no
second client. Every process started is stopped by PID.

Members run with --unsafe-no-fsync where the server has it (3.5+): the tests
kill processes, never the machine, so the page cache survives, and a loaded
2-core machine then keeps its elections steady.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import free_port, wait_until

HERE = Path(__file__).resolve().parent
GO_MOD = HERE / "etcd" / "go.mod"


def pinned_version() -> str:
    """The etcd server version tests/etcd/go.mod pins, e.g. "3.6.16"."""
    match = re.search(r"^require go\.etcd\.io/etcd/server/v3 v([0-9.]+)$", GO_MOD.read_text(), re.M)
    if not match:
        raise RuntimeError(f"{GO_MOD}: no etcd server version")
    return match.group(1)


def etcd_binary() -> str | None:
    """The built etcd in the cache, else an `etcd` on PATH; None when there is none."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    built = cache / "meshdns-tests" / f"etcd-{pinned_version()}" / "etcd"
    if os.access(built, os.X_OK):
        return str(built)
    return shutil.which("etcd") or (str(Path("/usr/bin/etcd")) if os.access("/usr/bin/etcd", os.X_OK) else None)


NO_ETCD = "no etcd binary: run `sh tests/install-tools.sh` (builds one from tests/etcd) or install etcd-server"


def server_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"etcd Version: (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class Member:
    def __init__(self, name: str, host: str, data_dir: Path, client_port: int, peer_port: int, log: Path):
        self.name = name
        self.host = host
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.log = log
        self.args: list[str] = []
        self.proc: subprocess.Popen | None = None

    scheme = "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        """kill -9 and reap (SIGCONT first, so a stopped member dies too)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.send_signal(signal.SIGCONT)
        self.proc.wait(timeout=30)


class EtcdCluster:
    """`size` members on loopback; index members 0..size-1."""

    def __init__(self, tmp_path: Path, *, size: int = 3, binary: str | None = None, tls: Path | None = None,
                 hosts: tuple[str, ...] | None = None, extra_hosts: tuple[str, ...] = ()):
        """`tls`: a directory with ca.crt, etcd.crt/etcd.key (the members' certificate, also used by etcd's
        own gateway as a client) and client.crt/client.key; clients then speak https and must show a
        certificate signed by ca.crt. A member m<i> uses m<i>.crt/m<i>.key instead where they exist.
        `hosts`: each member's loopback address (default 127.0.0.1 for all). `extra_hosts`: addresses (of
        a network namespace's veth pair) the members also take clients on, at the same port."""
        self.extra_hosts = extra_hosts
        self.binary = binary or etcd_binary()
        if self.binary is None:
            raise RuntimeError(NO_ETCD)
        self.version = server_version(self.binary)
        self.root = tmp_path / "etcd"
        self.root.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.tls = tls
        self.hosts = hosts or ("127.0.0.1",) * size
        if len(self.hosts) != size:
            raise ValueError(f"hosts: {len(self.hosts)} addresses for {size} members")
        self.members: list[Member] = []

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def endpoints_on(self, host: str) -> list[str]:
        """The members' client URLs at one of `extra_hosts`."""
        return [f"{m.scheme}://{host}:{m.client_port}" for m in self.members]

    def start(self, timeout: float = 60) -> "EtcdCluster":
        for attempt in range(3):  # a free port can be taken before etcd binds it
            self._configure(attempt)
            for member in self.members:
                member.spawn()
            try:
                self.wait_healthy(timeout)
                return self
            except AssertionError:
                if all(m.running for m in self.members) or attempt == 2:
                    self.stop()
                    raise
                self.stop()
        return self

    def _configure(self, attempt: int) -> None:
        ports = [(free_port(), free_port()) for _ in range(self.size)]
        names = [f"m{i}" for i in range(self.size)]
        initial = ",".join(f"{n}=http://{h}:{peer}" for n, h, (_, peer) in zip(names, self.hosts, ports))
        self.members = []
        for name, host, (client, peer) in zip(names, self.hosts, ports):
            data = self.root / f"{name}-{attempt}"
            member = Member(name, host, data, client, peer, self.root / f"{name}-{attempt}.log")
            member.scheme = "https" if self.tls else "http"
            member.args = [
                self.binary, "--name", name, "--data-dir", str(data),
                "--listen-client-urls", ",".join([member.endpoint] + [f"{member.scheme}://{extra}:{client}"
                                                                      for extra in self.extra_hosts]),
                "--advertise-client-urls", member.endpoint,
                "--listen-peer-urls", f"http://{host}:{peer}",
                "--initial-advertise-peer-urls", f"http://{host}:{peer}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"meshdns-test-{os.getpid()}-{attempt}",
                "--listen-metrics-urls", f"http://{host}:{free_port()}",
                "--grpc-keepalive-min-time", "1s", "--log-level", "warn",
            ]
            if self.version >= (3, 5):
                member.args.append("--unsafe-no-fsync")
            if self.tls:
                own = name if (self.tls / f"{name}.crt").exists() else "etcd"
                member.args += ["--cert-file", str(self.tls / f"{own}.crt"), "--key-file", str(self.tls / f"{own}.key"),
                                "--trusted-ca-file", str(self.tls / "ca.crt"), "--client-cert-auth"]
            self.members.append(member)

    def client(self, *, timeout: float = 5.0):
        """A store client of all members, pinging every 2 s (the members allow 1 s); with `tls`, it trusts
        ca.crt and shows client.crt."""
        from meshdns.store.etcd import EtcdKV
        files = {}
        if self.tls:
            files = {"ca_file": str(self.tls / "ca.crt"), "cert_file": str(self.tls / "client.crt"),
                     "key_file": str(self.tls / "client.key")}
        return EtcdKV(self.endpoints, timeout=timeout, keepalive_time=2, keepalive_timeout=2, **files)

    # -- JSON gateway ---------------------------------------------------------

    def call(self, index: int, path: str, body: dict | None = None, timeout: float = 5) -> dict:
        request = urllib.request.Request(self.members[index].endpoint + path, data=json.dumps(body or {}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls / "ca.crt"))
            context.load_cert_chain(str(self.tls / "client.crt"), str(self.tls / "client.key"))
        with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:
            return json.loads(reply.read() or b"{}")

    def status(self, index: int) -> dict | None:
        try:
            return self.call(index, "/v3/maintenance/status", timeout=2)
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def leader(self, timeout: float = 30) -> int:
        """Index of the member the running members agree leads."""
        def find():
            ids = {}
            leaders = set()
            for i, m in enumerate(self.members):
                st = self.status(i) if m.running else None
                if st:
                    ids[st["header"]["member_id"]] = i
                    leaders.add(st.get("leader"))
            return ids[leaders.pop()] if len(leaders) == 1 and next(iter(leaders)) in ids else None
        return wait_until(lambda: (idx := find()) is not None and (idx,), timeout, 0.1, what="an etcd leader")[0]

    def wait_healthy(self, timeout: float = 60) -> None:
        """Every running member answers and has a leader."""
        def healthy():
            for i, m in enumerate(self.members):
                if not m.running:
                    continue
                st = self.status(i)
                if not st or st.get("leader") in (None, "0"):
                    return False
            return True
        wait_until(healthy, timeout, 0.1, what="etcd members healthy")

    def revision(self) -> int:
        for i, m in enumerate(self.members):
            if m.running and (st := self.status(i)):
                return int(st["header"]["revision"])
        raise AssertionError("no etcd member answers")

    def compact(self, revision: int | None = None) -> int:
        """Compact the history at `revision` (default: the current one); returns it."""
        revision = revision or self.revision()
        index = next(i for i, m in enumerate(self.members) if m.running)
        self.call(index, "/v3/kv/compaction", {"revision": str(revision), "physical": True}, timeout=30)
        return revision

    def put(self, key: bytes, value: bytes, *, via: int | None = None) -> int:
        """A write through member `via`'s gateway (a second client); returns its revision."""
        index = via if via is not None else next(i for i, m in enumerate(self.members) if m.running)
        reply = self.call(index, "/v3/kv/put", {"key": base64.b64encode(key).decode(),
                                                "value": base64.b64encode(value).decode()})
        return int(reply["header"]["revision"])

    # -- failures -------------------------------------------------------------

    def kill(self, index: int) -> None:
        self.members[index].kill()

    def restart(self, index: int) -> None:
        """Start a killed member again with the same arguments."""
        member = self.members[index]
        assert not member.running, f"{member.name} is still running"
        member.spawn()

    def pause(self, index: int) -> None:
        self.members[index].proc.send_signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        self.members[index].proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for member in self.members:
            member.kill()

    def logs(self) -> str:
        return "\n".join(f"== {m.name}\n{m.log.read_text(errors='replace')[-3000:]}"
                         for m in self.members if m.log.exists())



# -- fixtures for the store tests ---------------------------------------------------
# Test modules import these names; pytest then finds the fixtures there.

@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """A 3-member cluster shared by a module's tests (each test uses its own key prefix)."""
    cluster = _cluster(tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_own(tmp_path):
    """A 3-member cluster for one test that kills, stops or compacts members."""
    cluster = _cluster(tmp_path)
    yield cluster
    cluster.stop()


def _cluster(path: Path) -> EtcdCluster:
    if etcd_binary() is None:
        pytest.skip(NO_ETCD)
    return EtcdCluster(path).start()


class Stores:
    """Clients of one backend. With etcd each `make()` is a new client (a replica of its own);
    SQLite is one process's store, so every `make()` returns the one instance."""

    def __init__(self, backend: str, path: Path, cluster: EtcdCluster | None):
        self.backend = backend
        self.path = path
        self.cluster = cluster
        self.made: list = []

    def make(self, *, watch_buffer: int = 1024):
        from meshdns.store.sqlite import SqliteKV
        if self.backend == "sqlite":
            if not self.made:
                self.made.append(SqliteKV(self.path, watch_buffer=watch_buffer))
            return self.made[0]
        kv = self.cluster.client()
        self.made.append(kv)
        return kv

    async def close(self) -> None:
        for kv in self.made:
            await kv.close()


@pytest.fixture(params=["sqlite", "etcd"])
async def stores(request, tmp_path):
    """The same test on the SQLite backend and on a real etcd."""
    cluster = request.getfixturevalue("etcd") if request.param == "etcd" else None
    made = Stores(request.param, tmp_path / "store", cluster)
    yield made
    await made.close()


_prefixes = itertools.count()


@pytest.fixture
def prefix() -> bytes:
    """A key prefix of this test's own on the shared cluster."""
    return b"/t%d/" % next(_prefixes)


async def eventually(predicate, timeout: float = 30.0, *, what: str = ""):
    """Await until predicate() is truthy (checked every 20 ms); fails after a generous bound."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}")
        await asyncio.sleep(0.02)
