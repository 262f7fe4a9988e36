"""HTTP API abuse and exposure: header and body bounds, blocking-query cap, slow clients, TLS."""
from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error

import pytest

from harness import ROOT, ServerProcess, api, query, rrset_values, wait_until

IDLE = 2.0   # http.idle_timeout in these tests


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server({"http": {"idle_timeout": f"{IDLE:g}s", "max_blocking_queries": 3}},
                        zones=tmp_path / "zones")


def raw_request(port: int, data: bytes, *, timeout: float = 5) -> bytes:
    """Send bytes, read until the server closes or the answer is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            head, sep, body = out.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
                b"content-length:")]
            if sep and length and len(body) >= length[0]:
                break
        return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def still_serving(srv) -> None:
    assert api(srv.http, "GET", "/v1/agent/services").status == 200
    assert api(srv.http, "PUT", "/v1/agent/service/register",
               {"ID": "ok", "Name": "ok", "Address": "127.5.0.1", "Port": 1}).status == 200
    assert rrset_values(query(srv.dns_port, "ok.service.consul")) == ["127.5.0.1"]


def test_oversized_request_heads_are_refused_and_the_server_keeps_working(srv):
    big = b"GET /v1/agent/services HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
    reply = raw_request(srv.http_port, big)
    assert status_of(reply) in (400, 431) and b"8192" in reply, reply[:200]
    long_url = b"GET /v1/catalog/service/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert status_of(raw_request(srv.http_port, long_url)) in (400, 414, 431)
    many = (b"GET /v1/agent/services HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200)) + b"\r\n")
    assert status_of(raw_request(srv.http_port, many)) in (400, 431)
    # a header just under the limit is fine
    ok = b"GET /v1/agent/services HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Ok: " + b"a" * 8000 + b"\r\n\r\n"
    assert status_of(raw_request(srv.http_port, ok)) == 200
    still_serving(srv)


def test_body_over_the_limit_is_refused_with_or_without_a_length(srv):
    blob = {"ID": "big", "Name": "big", "Address": "127.5.0.2", "Meta": {"k": "v" * (2 << 20)}}
    r = api(srv.http, "PUT", "/v1/agent/service/register", blob)
    assert r.status == 400 and "larger than 1048576 bytes" in r.text
    chunked = (b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"%x\r\n%s\r\n" % (65536, b"x" * 65536) for _ in range(20)) + b"0\r\n\r\n")
    reply = raw_request(srv.http_port, chunked)
    assert status_of(reply) == 400 and b"larger than 1048576 bytes" in reply
    assert api(srv.http, "GET", "/v1/agent/services").json() == {}
    still_serving(srv)


def test_blocking_queries_beyond_the_cap_get_429(srv):
    index = api(srv.http, "GET", "/v1/catalog/services").index
    results = []

    def park():
        results.append(api(srv.http, "GET", f"/v1/catalog/services?index={index}&wait=30s"))

    parked = [threading.Thread(target=park) for _ in range(3)]
    for t in parked:
        t.start()
    wait_until(lambda: srv.app.api.ctx.watch.active == 3)
    r = api(srv.http, "GET", f"/v1/health/service/x?index={index}&wait=30s")
    assert r.status == 429 and r.headers["Retry-After"] == "1" and "too many blocking queries" in r.text
    assert api(srv.http, "GET", "/v1/catalog/services").status == 200        # non-blocking reads still work
    still_serving(srv)                                                           # a change wakes the three
    for t in parked:
        t.join(10)
    assert [r.status for r in results] == [200, 200, 200]
    assert all("ok" in r.json() for r in results)
    assert srv.app.api.ctx.watch.active == 0


def slow_client(port: int, payload: bytes, *, per_byte: float, limit: float) -> tuple[float, bytes, int]:
    """Send payload one byte every `per_byte` seconds until the server hangs up; (seconds, reply, bytes sent)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    started, sent, reply = time.monotonic(), 0, b""
    try:
        s.setblocking(False)
        while time.monotonic() - started < limit:
            if sent < len(payload):
                try:
                    s.send(payload[sent:sent + 1])
                    sent += 1
                except (BrokenPipeError, ConnectionResetError):
                    break
            next_byte = time.monotonic() + per_byte
            closed = False
            while time.monotonic() < next_byte:
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    time.sleep(0.01)
                    continue
                except ConnectionResetError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                reply += chunk
            if closed:
                break
        return time.monotonic() - started, reply, sent
    finally:
        s.close()


def test_slow_clients_are_cut_off(srv):
    """Slow-loris: a request head trickling in at one byte per second is closed after http.idle_timeout."""
    head = b"GET /v1/agent/services HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: " + b"s" * 200 + b"\r\n\r\n"
    results = {}

    def run(name, payload, per_byte):
        results[name] = slow_client(srv.http_port, payload, per_byte=per_byte, limit=IDLE + 8)

    body_head = (b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n")
    threads = [threading.Thread(target=run, args=("head", head, 1.0)),
               threading.Thread(target=run, args=("silent", b"", 1.0))]
    for t in threads:
        t.start()
    # meanwhile everybody else is served as usual
    still_serving(srv)
    # a slow body: the head arrives at once, the body one byte per second
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=IDLE + 8) as s:
        s.sendall(body_head)
        started = time.monotonic()
        s.setblocking(False)
        reply = b""
        while time.monotonic() - started < IDLE + 8 and b"\r\n\r\n" not in reply:
            try:
                s.send(b"{")
            except OSError:
                break
            wait_end = time.monotonic() + 1.0
            while time.monotonic() < wait_end:
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    time.sleep(0.01)
                    continue
                reply += chunk
                if not chunk or b"\r\n\r\n" in reply:
                    break
        body_took = time.monotonic() - started
    for t in threads:
        t.join(IDLE + 10)
    # never before http.idle_timeout; and the server hung up (the clients give up only at IDLE + 8 s, a bound
    # generous enough for a busy machine)
    took, reply_head, sent = results["head"]
    assert IDLE - 0.2 <= took < IDLE + 8 and sent < len(head) and reply_head == b"", results["head"]
    took_silent = results["silent"][0]
    assert IDLE - 0.2 <= took_silent < IDLE + 8, results["silent"]
    assert status_of(reply) == 408 and b"did not arrive within 2s" in reply, reply
    assert IDLE - 0.2 <= body_took < IDLE + 8
    assert api(srv.http, "GET", "/v1/agent/services").json().keys() == {"ok"}   # nothing half-registered
    print(f"\nslow clients cut off: head at 1 byte/s after {took:.2f}s ({sent} bytes), silent after "
          f"{took_silent:.2f}s, body at 1 byte/s after {body_took:.2f}s (408); http.idle_timeout {IDLE:g}s")


# -- TLS ----------------------------------------------------------------------------------------------


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def certs(tmp_path):
    """A test CA and a server certificate for 127.0.0.1 signed by it (made with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path / "tls"
    d.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=meshdns test CA",
            cwd=d)
    openssl("req", *ec, "-keyout", "api.key", "-out", "api.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "api.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "api.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d


TOKEN = "tls-t0ken-s3cret"


def test_api_over_tls_with_tokens(certs, tmp_path):
    (tmp_path / "zones").mkdir()
    conf = tmp_path / "meshdns.toml"
    conf.write_text(f'[[acl.tokens]]\nsecret = "{TOKEN}"\nwrite = ["billing"]\n')
    proc = ServerProcess("--config", str(conf), "--data-dir", str(tmp_path / "data"), "--zones",
                         str(tmp_path / "zones"), "--http-tls-cert", str(certs / "api.crt"),
                         "--http-tls-key", str(certs / "api.key")).start()
    try:
        assert proc.http.startswith("https://")
        trust = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        r = api(proc.http, "GET", "/v1/agent/services", context=trust)
        assert r.status == 200 and r.json() == {}
        # the certificate really is ours: a client that does not trust the test CA refuses it
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            api(proc.http, "GET", "/v1/agent/services", context=ssl.create_default_context())
        # plain HTTP to the TLS port gets no answer
        plain = http.client.HTTPConnection("127.0.0.1", proc.http_port, timeout=5)
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            plain.request("GET", "/v1/agent/services")
            plain.getresponse().read()
        plain.close()
        # tokens work over TLS: none -> 403, the right one -> 200
        body = {"ID": "b1", "Name": "billing", "Address": "127.5.1.1", "Port": 443}
        assert api(proc.http, "PUT", "/v1/agent/service/register", body, context=trust).status == 403
        assert api(proc.http, "PUT", "/v1/agent/service/register", body, token="wrong", context=trust).status == 403
        assert api(proc.http, "PUT", "/v1/agent/service/register", body, token=TOKEN, context=trust).status == 200
        assert rrset_values(query(proc.dns_port, "billing.service.consul")) == ["127.5.1.1"]
        assert TOKEN not in proc.stderr()
        assert proc.stop() == 0
    finally:
        proc.kill()


def serve_exit(tmp_path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "zones").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "meshdns", "serve", "--dns", "127.0.0.1:0", "--http", "127.0.0.1:0",
                           "--data-dir", str(tmp_path / "data"), "--zones", str(tmp_path / "zones"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("case", ["missing cert", "missing key", "cert is a directory", "not PEM", "wrong key"])
def test_unusable_tls_files_stop_startup_naming_the_file(certs, tmp_path, case):
    cert, key = str(certs / "api.crt"), str(certs / "api.key")
    if case == "missing cert":
        cert = str(tmp_path / "nope.crt")
        named = ["http.tls_cert", cert, "No such file"]
    elif case == "missing key":
        key = str(tmp_path / "nope.key")
        named = ["http.tls_key", key, "No such file"]
    elif case == "cert is a directory":
        cert = str(certs)
        named = ["http.tls_cert", cert]
    elif case == "not PEM":
        (tmp_path / "junk.crt").write_text("not a certificate\n")
        cert = str(tmp_path / "junk.crt")
        named = [cert, "not a PEM certificate"]
    else:
        key = str(certs / "ca.key")      # a key that does not belong to the certificate
        named = [cert, key, "KEY_VALUES_MISMATCH"]
    out = serve_exit(tmp_path, "--http-tls-cert", cert, "--http-tls-key", key)
    assert out.returncode == 2, out.stderr
    for text in named:
        assert text in out.stderr, (text, out.stderr)
    assert "meshdns ready" not in out.stdout and "Traceback" not in out.stderr


def test_idle_timeout_must_be_positive(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text('[http]\nidle_timeout = "0s"\n')
    out = serve_exit(tmp_path, "--config", str(conf))
    assert out.returncode == 2 and "http.idle_timeout" in out.stderr
