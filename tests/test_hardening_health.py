"""Health-check targets that hang: the check goes critical after its Timeout, nothing leaks, others keep time."""
from __future__ import annotations

import asyncio
import os
import selectors
import socket
import threading
import time

import dns.rcode

from harness import FlipHttpServer, api, query, rrset_values, wait_until


class HangingHttpServer:
    """Accepts connections, reads whatever is sent, never answers; counts what it holds open."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/health"
        self.accepted = 0
        self.open = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                if key.fileobj is self.sock:
                    try:
                        conn, _ = self.sock.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    self.accepted += 1
                    self.open += 1
                    continue
                try:
                    data = key.fileobj.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:          # the prober gave up and closed its end
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    self.open -= 1
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class BlackHoleTcp:
    """A listener whose accept queue is full and never drained: the kernel drops new SYNs, so connect() hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.fillers = []
        for _ in range(4):      # fill the accept queue (its length is backlog + 1 on Linux)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(self.sock.getsockname())
            self.fillers.append(s)
        time.sleep(0.05)

    def hangs(self) -> bool:
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(self.sock.getsockname())
            return False
        except socket.timeout:
            return True
        finally:
            probe.close()

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.sock.close()


INTERVAL, TIMEOUT = 0.3, 0.2


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def tasks(srv) -> int:
    return srv.call(lambda: len(asyncio.all_tasks()))


def test_hanging_targets_go_critical_after_timeout_without_leaks_and_others_keep_time(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    srv = start_server(zones=tmp_path / "zones")
    hanging, hole, steady = HangingHttpServer(), BlackHoleTcp(), FlipHttpServer(200)
    try:
        assert hole.hangs(), "the kernel accepted a connection past a full accept queue"
        time.sleep(INTERVAL)
        base_tasks, base_fds = tasks(srv), fds()
        assert api(srv.http, "PUT", "/v1/agent/service/register",
                   {"ID": "steady", "Name": "steady", "Address": "127.4.0.1", "Port": 80,
                    "Check": {"HTTP": steady.url, "Interval": "200ms", "Timeout": "2s"}}).status == 200
        registered = {}
        names = [f"hang-http-{i}" for i in range(10)] + ["hang-tcp-0", "hang-tcp-1"]
        for i, name in enumerate(names):
            probe = {"HTTP": hanging.url} if "http" in name else {"TCP": hole.address}
            r = api(srv.http, "PUT", "/v1/agent/service/register",
                    {"ID": name, "Name": name, "Address": f"127.4.1.{i + 1}", "Port": 80,
                     "Check": {**probe, "Interval": f"{INTERVAL}s", "Timeout": f"{TIMEOUT}s", "Status": "passing"}})
            assert r.status == 200
            registered[name] = time.monotonic()
        assert rrset_values(query(srv.dns_port, "hang-http-0.service.consul")) == ["127.4.1.1"]   # passing at first

        # each goes critical after its Timeout (its first probe starts within one Interval: jitter)
        to_critical = {}

        def all_critical():
            checks = api(srv.http, "GET", "/v1/agent/checks").json()
            for name in names:
                if name not in to_critical and checks[f"service:{name}"]["Status"] == "critical":
                    to_critical[name] = time.monotonic() - registered[name]
            return len(to_critical) == len(names)
        wait_until(all_critical, timeout=30, interval=0.01)
        assert min(to_critical.values()) >= TIMEOUT - 0.02, to_critical    # never before its Timeout
        checks = api(srv.http, "GET", "/v1/agent/checks").json()
        assert "timed out after 0.2s" in checks["service:hang-http-0"]["Output"]
        assert "timed out after 0.2s" in checks["service:hang-tcp-0"]["Output"]
        assert query(srv.dns_port, "hang-http-0.service.consul").rcode() == dns.rcode.NXDOMAIN
        assert query(srv.dns_port, "hang-tcp-1.service.consul").rcode() == dns.rcode.NXDOMAIN

        # many intervals later: tasks, sockets and the target's open connections stay bounded, no growth
        samples = []
        steady_before, hung_before, t0 = len(steady.requests), hanging.accepted, time.monotonic()
        end = t0 + 20 * INTERVAL
        while time.monotonic() < end:
            samples.append((time.monotonic() - t0, tasks(srv), fds(), hanging.open))
            time.sleep(0.05)
        steady_got, window = len(steady.requests) - steady_before, time.monotonic() - t0
        hung = (hanging.accepted - hung_before) / 10                     # probes per hanging HTTP check
        first = [s for s in samples if s[0] < window / 3]
        last = [s for s in samples if s[0] > 2 * window / 3]
        n = len(names)
        for col in (1, 2, 3):
            assert max(s[col] for s in last) <= max(s[col] for s in first) + 2, (col, first, last)
        assert max(s[1] for s in samples) <= base_tasks + n + 4           # at most one probe per check in flight
        assert max(s[3] for s in samples) <= 10                           # one connection per hanging HTTP check
        assert hung >= 2                                                  # it really was probed all along
        # the healthy check kept its 200 ms schedule meanwhile: never more often, and not starved by the hanging
        # ones (counted against them, not against the clock: a busy machine slows every check alike)
        expected = window / 0.2
        assert hung <= steady_got <= 1.25 * expected + 1, (steady_got, hung, expected)
        assert api(srv.http, "GET", "/v1/agent/checks").json()["service:steady"]["Status"] == "passing"
        assert rrset_values(query(srv.dns_port, "steady.service.consul")) == ["127.4.0.1"]

        # deregistered: everything they held is given back
        for name in names + ["steady"]:
            assert api(srv.http, "PUT", f"/v1/agent/service/deregister/{name}").status == 200
        wait_until(lambda: hanging.open == 0, timeout=2)
        after = wait_until(lambda: (t := tasks(srv)) <= base_tasks and t, timeout=3)
        after_fds = wait_until(lambda: (f := fds()) <= base_fds and f, timeout=3)
        print(f"\nhanging targets: critical after {min(to_critical.values()):.2f}-{max(to_critical.values()):.2f}s "
              f"(Interval {INTERVAL}s, Timeout {TIMEOUT}s); {hanging.accepted} hung HTTP probes; tasks "
              f"{base_tasks} before, max {max(s[1] for s in samples)} during, {after} after; fds {base_fds} before, "
              f"max {max(s[2] for s in samples)} during, {after_fds} after; steady check {steady_got} probes "
              f"in {window:.1f}s (expected {expected:.0f})")
    finally:
        hanging.close()
        hole.close()
        steady.close()
