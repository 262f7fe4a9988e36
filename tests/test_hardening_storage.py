"""Storage faults with an expected outcome: kill -9 under registration load, a full disk, a disk gone read-only.

The disk faults are real kernel behaviour, not mocks: the data directory is a
small ext4 file system on a loop device, mounted in a private mount namespace
that lives exactly as long as the server process (nothing leaks onto the host).
It is filled up (ENOSPC), or forced read-only the way the kernel does it after a
disk error (errors=remount-ro via ext4's trigger_fs_error).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path

import dns.rcode
import pytest

from harness import ServerProcess, api, query, rrset_values, wait_until
from meshdns.store.sqlite import DB_NAME


def address(i: int) -> str:
    return f"127.2.{i // 250}.{i % 250 + 1}"


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


# -- 1. kill -9 while clients are registering ------------------------------------------------


def test_kill_9_under_registration_load_loses_no_acknowledged_registration(tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    data = tmp_path / "data"
    proc = ServerProcess("--data-dir", str(data), "--zones", str(zones)).start()
    acked: dict[str, str] = {}          # service ID -> address, for every registration that got a 200
    failed = []                         # (ID, what happened) for those cut off by the kill
    lock = threading.Lock()
    stop = threading.Event()

    def client(c: int) -> None:
        j = 0
        while not stop.is_set() and j < 5000:
            sid, addr = f"load-{c}-{j}", address(c * 600 + j % 600)
            try:
                r = api(proc.http, "PUT", "/v1/agent/service/register",
                        {"ID": sid, "Name": sid, "Address": addr, "Port": 8000 + c,
                         "Check": {"TTL": "1h", "Status": "passing"}}, timeout=5)
            except (OSError, urllib.error.URLError) as exc:
                failed.append((sid, type(exc).__name__))
                return          # the server is gone
            if r.status == 200:
                with lock:
                    acked[sid] = addr
            else:
                failed.append((sid, r.status))
            j += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acked) >= 300, timeout=30)
        with lock:
            before_kill = len(acked)
        proc.kill()                     # SIGKILL mid-stream: clients are still sending
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        proc.kill()
    assert all(isinstance(what, str) for _, what in failed), failed   # no error status, only cut connections
    assert integrity(data / DB_NAME) == "ok"

    proc = ServerProcess("--data-dir", str(data), "--zones", str(zones)).start()
    try:
        services = api(proc.http, "GET", "/v1/agent/services").json()
        missing = sorted(set(acked) - set(services))
        assert not missing, f"{len(missing)} acknowledged registrations lost, e.g. {missing[:5]}"
        unacked = set(services) - set(acked)
        assert unacked <= {sid for sid, _ in failed}      # extra ones are only those in flight at the kill
        for sid, addr in sorted(acked.items()):
            assert services[sid]["Address"] == addr
            assert rrset_values(query(proc.dns_port, f"{sid}.service.consul")) == [addr], sid
        checks = api(proc.http, "GET", "/v1/agent/checks").json()
        assert all(checks[f"service:{sid}"]["Status"] == "passing" for sid in acked)
        assert proc.stop() == 0, proc.stderr()
    finally:
        proc.kill()
    assert integrity(data / DB_NAME) == "ok"
    print(f"\nkill -9 under load: {before_kill} acknowledged at the kill signal, {len(acked)} in all, "
          f"{len(unacked)} in flight and also kept, all {len(acked)} present after restart (API and DNS)")


# -- 2. the data directory on a file system that fills up or goes read-only -------------------


def _mountable() -> str | None:
    """Why a private ext4 loop mount is not possible here (None if it is)."""
    if os.geteuid() != 0:
        return "needs root (mount namespace and loop device)"
    for tool in ("unshare", "mount", "mkfs.ext4", "e2fsck"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control missing)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"the kernel refuses a private mount namespace: {probe.stderr.strip()}"
    return None


class Ext4DataDir:
    """A small ext4 image; each server run mounts it in its own private mount namespace."""

    def __init__(self, tmp_path: Path, size_mb: int = 8):
        self.image = tmp_path / "data.img"
        self.mountpoint = tmp_path / "data"
        self.mountpoint.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        # -m 0: no blocks reserved for root (the tests run as root; the disk must really fill up)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        str(self.image)], check=True, capture_output=True)
        self.proc: ServerProcess | None = None

    def start(self, zones: Path) -> ServerProcess:
        mount = ('mount -o loop,errors=remount-ro "$0" "$1" || exit 97; shift; exec "$@"')
        wrap = ("unshare", "--mount", "--propagation", "private", "sh", "-c", mount,
                str(self.image), str(self.mountpoint))
        self.proc = ServerProcess("--data-dir", str(self.mountpoint), "--zones", str(zones), wrap=wrap)
        try:
            return self.proc.start()
        except RuntimeError as exc:
            if self.proc.proc.wait(5) == 97:
                pytest.skip(f"cannot mount a loop device in a private mount namespace here: {exc}")
            raise

    def inside(self, *parts: str) -> Path:
        """A path in the server's mount namespace, as seen from the test (through /proc/PID/root)."""
        return Path(f"/proc/{self.proc.proc.pid}/root") / str(self.mountpoint).lstrip("/") / Path(*parts)

    def device(self) -> str:
        mounts = Path(f"/proc/{self.proc.proc.pid}/mounts").read_text().splitlines()
        return next(line.split()[0] for line in mounts if line.split()[1] == str(self.mountpoint))

    def fill(self) -> int:
        """Fill the file system to the last block; returns the bytes written."""
        written = 0
        with open(self.inside("filler"), "wb", buffering=0) as f:
            chunk = b"\0" * (1 << 16)
            while True:
                try:
                    written += f.write(chunk)
                    os.fsync(f.fileno())
                except OSError:
                    break
            for size in (4096, 1024, 1):   # the last partial chunks
                while True:
                    try:
                        written += f.write(b"\0" * size)
                        os.fsync(f.fileno())
                    except OSError:
                        break
        return written

    def free(self) -> None:
        self.inside("filler").unlink()

    def fail_disk(self) -> None:
        """What the kernel does after a disk error with errors=remount-ro: the file system stops taking writes."""
        dev = Path(self.device()).name
        Path(f"/sys/fs/ext4/{dev}/trigger_fs_error").write_text("meshdns test: simulated disk error\n")

    def fsck(self) -> None:
        out = subprocess.run(["e2fsck", "-f", "-y", str(self.image)], capture_output=True, text=True)
        assert out.returncode in (0, 1), out.stdout + out.stderr   # 1: errors corrected

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()


@pytest.fixture
def ext4(tmp_path):
    reason = _mountable()
    if reason:
        pytest.skip(f"no real disk fault possible here: {reason}")
    disk = Ext4DataDir(tmp_path)
    yield disk
    disk.stop()


@pytest.fixture
def zones(tmp_path):
    path = tmp_path / "zones"
    path.mkdir()
    (path / "static.toml").write_text('[[service]]\nname = "static"\naddress = "127.3.0.1"\nport = 80\n')
    return path


def register(proc, i: int, **extra):
    return api(proc.http, "PUT", "/v1/agent/service/register",
               {"ID": f"web-{i}", "Name": "web", "Address": address(i), "Port": 80,
                "Check": {"TTL": "1h", "Status": "passing", "CheckID": f"ttl-{i}"}, **extra})


SPLIT = {"Kind": "service-splitter", "Name": "shop", "Splits": [{"Weight": 100, "Service": "web"}]}


def writes(proc) -> list[tuple[str, str, object]]:
    """One of every kind of write the API takes."""
    return [("PUT", "/v1/agent/service/register", {"ID": "web-new", "Name": "web", "Address": "127.2.9.9",
                                                    "Port": 80}),
            ("PUT", "/v1/agent/service/deregister/web-1", None),
            ("PUT", "/v1/agent/service/maintenance/web-2?enable=true", None),
            ("PUT", "/v1/agent/check/fail/ttl-3", None),
            ("PUT", "/v1/agent/check/register", {"Name": "extra", "TTL": "1h", "ServiceID": "web-0"}),
            ("PUT", "/v1/catalog/register", {"Node": "ext", "Address": "127.2.8.8",
                                             "Service": {"Service": "ext", "Port": 1}}),
            ("PUT", "/v1/config", {**SPLIT, "Splits": [{"Weight": 50, "Service": "web"},
                                                       {"Weight": 50, "Service": "static"}]}),
            ("DELETE", "/v1/config/service-splitter/shop", None)]


def visible_state(proc) -> dict:
    """What clients see: registrations, checks, splits, and DNS."""
    return {"services": api(proc.http, "GET", "/v1/agent/services").json(),
            "checks": {k: (v["Status"], v["ServiceID"]) for k, v in api(proc.http, "GET", "/v1/agent/checks")
                       .json().items()},
            "splits": [(s["Name"], s["Splits"]) for s in api(proc.http, "GET",
                                                            "/v1/config/service-splitter").json()],
            "catalog": sorted(api(proc.http, "GET", "/v1/catalog/services").json()),
            "dns": sorted(rrset_values(query(proc.dns_port, "web.service.consul"))),
            "split": sorted(rrset_values(query(proc.dns_port, "shop.service.consul"))),
            "static": rrset_values(query(proc.dns_port, "static.service.consul"))}


def durable_state(disk: Ext4DataDir) -> dict:
    """The records on disk right now, read from a copy (the server keeps the database open)."""
    copy = disk.mountpoint.parent / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    for name in (DB_NAME, DB_NAME + "-wal"):
        if disk.inside(name).exists():
            shutil.copyfile(disk.inside(name), copy / name)
    with sqlite3.connect(copy / DB_NAME) as conn:
        rows = [(*key.decode().removeprefix("/meshdns/v1/").split("/", 1), value)
                for key, value in conn.execute("SELECT key, value FROM kv ORDER BY key")]
    return {"records": [row for row in rows if row[0] != "check-status"],
            "statuses": {key: value for kind, key, value in rows if kind == "check-status"}}


def assert_refused_and_unchanged(disk: Ext4DataDir, proc, reason: str) -> None:
    before, on_disk = visible_state(proc), durable_state(disk)
    for method, path, body in writes(proc):
        r = api(proc.http, method, path, body)
        assert r.status == 503, (path, r)
        assert r.headers["Retry-After"] and reason in r.text and "nothing was changed" in r.text, (path, r.text)
    # nothing half-applied: memory, DNS and disk are exactly as before
    assert visible_state(proc) == before
    assert durable_state(disk) == on_disk
    # and the server keeps serving: DNS, reads, blocking reads, health
    assert sorted(rrset_values(query(proc.dns_port, "web.service.consul", tcp=True))) == before["dns"]
    assert query(proc.dns_port, "nope.service.consul").rcode() == dns.rcode.NXDOMAIN
    r = api(proc.http, "GET", f"/v1/health/service/web?index={api(proc.http, 'GET', '/v1/health/service/web').index}"
            "&wait=200ms")
    assert r.status == 200 and len(r.json()) == len(before["services"])
    assert api(proc.http, "GET", "/healthz").status == 200
    assert api(proc.http, "GET", "/readyz").status == 200
    # a TTL heartbeat that changes nothing needs no disk, so it still works
    assert api(proc.http, "PUT", "/v1/agent/check/pass/ttl-0").status == 200


def test_disk_full_writes_get_503_dns_keeps_answering_and_writes_resume(ext4, zones):
    proc = ext4.start(zones)
    for i in range(4):
        assert register(proc, i).status == 200
    assert api(proc.http, "PUT", "/v1/config", SPLIT).status == 200
    filled = ext4.fill()
    started = time.monotonic()
    assert_refused_and_unchanged(ext4, proc, "disk full")
    print(f"\ndisk full: filled {filled >> 10} KiB; 8 kinds of write got 503 in {time.monotonic() - started:.2f}s, "
          "DNS and reads kept answering")

    ext4.free()                                     # space again: writes succeed, no restart needed
    for method, path, body in writes(proc):
        assert api(proc.http, method, path, body).status == 200, path
    after = visible_state(proc)
    assert sorted(after["services"]) == ["web-0", "web-2", "web-3", "web-new"]
    assert after["checks"]["ttl-3"][0] == "critical" and "_service_maintenance:web-2" in after["checks"]
    assert after["splits"] == [] and "ext" in after["catalog"]
    proc.kill()
    assert integrity_of_image(ext4) == "ok"


def test_disk_gone_read_only_writes_get_503_and_all_is_there_after_fsck(ext4, zones):
    proc = ext4.start(zones)
    for i in range(4):
        assert register(proc, i).status == 200
    assert api(proc.http, "PUT", "/v1/config", SPLIT).status == 200
    before = visible_state(proc)
    ext4.fail_disk()                                # the kernel stops writes to the file system
    assert_refused_and_unchanged(ext4, proc, "read-only")
    assert "read-only" in proc.stderr()             # the log says what to fix
    assert proc.stop() == 0, proc.stderr()          # SIGTERM still stops it cleanly

    ext4.fsck()                                     # what an operator does, then restarts meshdns
    proc = ext4.start(zones)
    assert visible_state(proc) == before
    assert register(proc, 9).status == 200
    proc.kill()
    assert integrity_of_image(ext4) == "ok"


def integrity_of_image(disk: Ext4DataDir) -> str:
    """PRAGMA integrity_check on the database inside the image (the server is gone; mounted in a throwaway
    private namespace so nothing is left mounted on the host)."""
    code = "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])"
    script = 'mount -o loop "$0" "$1" && exec "$2" -c "$3" "$1/' + DB_NAME + '"'
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                          str(disk.image), str(disk.mountpoint), sys.executable, code],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or out.stderr
