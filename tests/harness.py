"""Start the real meshdns on 127.0.0.1 port 0 and talk to it over sockets.

`ServerThread` runs the app in a thread with its own event loop, so tests can
use blocking clients (dnspython, dig, urllib). `ServerProcess` runs
`python -m meshdns serve` for tests that need signals or kill -9.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from meshdns import app as app_module
from meshdns.config import Config, parse_config

ROOT = Path(__file__).resolve().parent.parent
ZONES = ROOT / "zones"


def make_config(tmp_path: Path, overrides: dict[str, Any] | None = None, *, zones: Path | None = None) -> Config:
    """zones: a directory of zone files (made, empty, when it does not exist yet); default the shipped zones/."""
    if zones is not None:
        zones.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"zones": str(zones or ZONES), "data_dir": str(tmp_path / "data"),
                            "dns": {"listen": "127.0.0.1:0"}, "http": {"listen": "127.0.0.1:0"}}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data)


class ServerThread:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.app: app_module.App | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="meshdns-test-server", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.app = app_module.build(self.cfg)
            await app_module.run(self.app, on_ready=lambda _: self._ready.set(), signals=False)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test by start()
            self._error = exc
            self._ready.set()

    def start(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("meshdns did not start within 20 s")
        if self._error is not None:
            raise self._error
        return self

    @property
    def dns_port(self) -> int:
        return self.app.dns_port

    @property
    def http_port(self) -> int:
        return self.app.http_port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def call(self, fn, *args):
        """Run fn(*args) on the server's loop and wait for it (sync or coroutine function)."""
        async def wrapper():
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(30)

    def stop(self) -> None:
        if self.loop is not None and self.app is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.app.stop.set)
        self._thread.join(15)


class ServerProcess:
    """meshdns as a separate process; `kill()` is kill -9."""

    READY = re.compile(r"meshdns ready dns=[^:]+:(\d+) http=[^:]+:(\d+)")

    def __init__(self, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()):
        # wrap: a command that execs the rest (e.g. unshare ... sh -c '...; exec "$@"'), so proc.pid is meshdns
        self.args = [*wrap, sys.executable, "-m", "meshdns", "serve", "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0",
                     *args]
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.dns_port = self.http_port = 0
        self.stderr_path: Path | None = None

    def start(self, timeout: float = 20) -> "ServerProcess":
        import tempfile
        fd, name = tempfile.mkstemp(prefix="meshdns-stderr-")
        self.stderr_path = Path(name)
        self.proc = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                     stderr=fd, text=True, start_new_session=True)
        os.close(fd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"meshdns exited early:\n{self.stderr()}")
            m = self.READY.search(line)
            if m:
                self.dns_port, self.http_port = int(m.group(1)), int(m.group(2))
                return self
        raise RuntimeError(f"meshdns did not become ready:\n{self.stderr()}")

    @property
    def http(self) -> str:
        return f"{'https' if '--http-tls-cert' in self.args else 'http'}://127.0.0.1:{self.http_port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path and self.stderr_path.exists() else ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


# -- DNS clients -------------------------------------------------------------


def query(port: int, name: str, rdtype: str = "A", *, tcp: bool = False, edns: int | None = 0,
          payload: int = 1232, timeout: float = 3.0, source: str = "127.0.0.1",
          rd: bool = False) -> dns.message.Message:
    if edns is None:
        q = dns.message.make_query(name, rdtype, use_edns=False)
    else:
        q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload)
    if not rd:
        q.flags &= ~dns.flags.RD
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout, source=source)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout, ignore_trailing=False, source=source)


def rrset_values(msg: dns.message.Message, section: str = "answer") -> list[str]:
    return [rd.to_text() for rrset in getattr(msg, section) for rd in rrset]


def dig_path() -> str:
    path = shutil.which("dig")
    if path is None:
        raise RuntimeError("dig is not installed (apt-get install bind9-dnsutils)")
    return path


def dig(port: int, *args: str) -> str:
    out = subprocess.run([dig_path(), "@127.0.0.1", "-p", str(port), "+time=3", "+tries=1", *args],
                         capture_output=True, text=True, timeout=20)
    return out.stdout


# -- unbound as a client of meshdns ------------------------------------------


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now (the caller retries on a race)."""
    import socket
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1")


UNBOUND_CONF = """\
server:
    interface: 127.0.0.1
    port: {port}
    outgoing-interface: 127.0.0.1
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    outgoing-range: 64
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    domain-insecure: "{domain}"
    qname-minimisation: no
    prefetch: no
remote-control:
    control-enable: no
{zones}
"""


class Unbound:
    """Debian's unbound on 127.0.0.1, forwarding zones to loopback servers only.

    `zones` maps a zone ("consul.", ".") to a port on 127.0.0.1; with "." in it
    no name is ever sent to the root servers (nothing leaves loopback).
    """

    def __init__(self, tmp_path: Path, zones: dict[str, int], *, kind: str = "forward",
                 insecure: str = "consul"):
        if "." not in zones:
            raise ValueError("give a '.' zone on loopback: unbound must never query the internet")
        self.dir = tmp_path / "unbound"
        self.dir.mkdir(exist_ok=True)
        self.zones, self.kind, self.insecure = zones, kind, insecure
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @staticmethod
    def binary() -> str | None:
        return shutil.which("unbound") or next((p for p in ("/usr/sbin/unbound", "/usr/local/sbin/unbound")
                                                if os.path.exists(p)), None)

    def _conf(self, port: int) -> str:
        blocks = []
        for zone, zport in self.zones.items():
            kind = "forward" if zone == "." else self.kind
            blocks.append(f"{kind}-zone:\n    name: \"{zone}\"\n    {kind}-addr: 127.0.0.1@{zport}\n")
        return UNBOUND_CONF.format(port=port, dir=self.dir, domain=self.insecure, zones="".join(blocks))

    def start(self, timeout: float = 15) -> "Unbound":
        binary = self.binary()
        if binary is None:
            raise RuntimeError("unbound is not installed (apt-get install unbound)")
        for _ in range(5):
            port = free_port()
            conf = self.dir / "unbound.conf"
            conf.write_text(self._conf(port))
            log = open(self.dir / "unbound.log", "w")
            self.proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            log.close()
            if self._wait_ready(port, timeout):
                self.port = port
                return self
            self.stop()
        raise RuntimeError(f"unbound did not start:\n{(self.dir / 'unbound.log').read_text()}")

    def _wait_ready(self, port: int, timeout: float) -> bool:
        """Poll until it answers a query it answers itself (CHAOS version.server): no upstream traffic."""
        deadline = time.monotonic() + timeout
        q = dns.message.make_query("version.server.", "TXT", rdclass="CH")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                dns.query.udp(q, "127.0.0.1", port=port, timeout=0.2)
                return True
            except Exception:
                time.sleep(0.05)
        return False

    def log(self) -> str:
        path = self.dir / "unbound.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


# -- HTTP API clients and little servers for health checks -------------------


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        import json
        return json.loads(self.body)

    @property
    def index(self) -> int:
        return int(self.headers["X-Consul-Index"])

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:200]!r})"


def api(base: str, method: str, path: str, body: Any = None, *, token: str | None = None,
        raw: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 15,
        context: Any = None) -> Reply:
    """One HTTP request with urllib; JSON `body` or `raw` bytes; never raises on 4xx/5xx.

    context: an ssl.SSLContext for https:// bases (e.g. one trusting a test CA)."""
    import json
    import urllib.error
    import urllib.request
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["X-Consul-Token"] = token
    req = urllib.request.Request(base + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read())


def metric_samples(base: str) -> dict[tuple[str, tuple], float]:
    """GET /metrics, parsed by prometheus-client: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families
    r = api(base, "GET", "/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, *, what: str = ""):
    """Poll until predicate() is truthy and return its value; an AssertionError counts as not yet.

    Fails after `timeout` seconds, naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s{': ' + what if what else ''} (last: {last!r})")
        time.sleep(interval)


class FlipHttpServer:
    """An HTTP server on 127.0.0.1 answering every request with `status` (the test flips it)."""

    def __init__(self, status: int = 200, *, certfile: str | None = None, keyfile: str | None = None,
                 host: str = "127.0.0.1"):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        outer = self
        self.status = status
        self.requests: list[tuple[str, str, dict]] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path, dict(self.headers)))
                status = outer.status
                body = b"" if status in (204, 304) or self.command == "HEAD" else f"status {status}\n".encode()
                self.send_response(status)
                if status not in (204, 304):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        scheme = "http"
        if certfile:
            import ssl
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certfile, keyfile)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://{host}:{self.port}/health"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FlipTcpServer:
    """A TCP listener on 127.0.0.1 that the test can close (connection refused) and reopen."""

    def __init__(self):
        import socket
        self._socket_mod = socket
        self.sock = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.open()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open(self) -> None:
        s = self._socket_mod.socket()
        s.setsockopt(self._socket_mod.SOL_SOCKET, self._socket_mod.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.sock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        """Stop listening: shutdown wakes the accepting thread, so the port refuses at once."""
        if self.sock is not None:
            try:
                self.sock.shutdown(self._socket_mod.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
