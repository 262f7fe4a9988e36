"""Faults with an expected outcome: signals during load, dead upstreams, in-flight queries at shutdown."""
import signal
import socket
import struct
import threading
import time

import dns.message
import dns.rcode

from harness import ServerProcess, query, rrset_values


def test_sighup_storm_during_queries_loses_no_answer(tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "a.toml").write_text('[[service]]\nname = "app"\naddress = "10.6.0.1"\nport = 80\n')
    proc = ServerProcess("--zones", str(zones), "--data-dir", str(tmp_path / "d")).start()
    stop = threading.Event()

    def storm():
        while not stop.is_set():
            proc.signal(signal.SIGHUP)
            time.sleep(0.005)

    t = threading.Thread(target=storm)
    t.start()
    answered = wrong = 0
    try:
        deadline = time.monotonic() + 3.0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            i = 0
            while time.monotonic() < deadline:
                i += 1
                s.sendto(dns.message.make_query("app.service.consul", "A", id=i & 0xFFFF).to_wire(),
                         ("127.0.0.1", proc.dns_port))
                msg = dns.message.from_wire(s.recv(4096))
                if [rd.to_text() for rrset in msg.answer for rd in rrset] == ["10.6.0.1"]:
                    answered += 1
                else:
                    wrong += 1
    finally:
        stop.set()
        t.join()
        code = proc.stop()
    assert answered > 100 and wrong == 0
    assert code == 0


def test_sigterm_drains_in_flight_tcp_queries(tmp_path, upstreams):
    slow = upstreams()
    slow.add("slow.example", "A", "192.0.2.7")
    slow.delay = 1.0
    proc = ServerProcess("--zones", str(tmp_path), "--data-dir", str(tmp_path / "d"),
                         "--recursor", slow.address).start()
    try:
        conn = socket.create_connection(("127.0.0.1", proc.dns_port), timeout=5)
        q = dns.message.make_query("slow.example", "A", id=321).to_wire()
        conn.sendall(struct.pack("!H", len(q)) + q)
        deadline = time.monotonic() + 3
        while slow.count("slow.example") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.signal(signal.SIGTERM)           # while the query is waiting on the upstream
        (n,) = struct.unpack("!H", conn.recv(2))
        data = b""
        while len(data) < n:
            data += conn.recv(n - len(data))
        msg = dns.message.from_wire(data)
        assert msg.id == 321 and rrset_values(msg) == ["192.0.2.7"]
        conn.close()
        assert proc.proc.wait(10) == 0   # and then it exits cleanly by itself
    finally:
        proc.stop()


def test_all_upstreams_dead_servfail_within_timeout_then_stale(start_server, upstreams):
    up = upstreams()
    up.add("cached.example", "A", "192.0.2.8", ttl=1)
    srv = start_server({"forwarding": {"recursors": [up.address, "127.0.0.1:9"], "timeout": "300ms"},
                        "cache": {"serve_stale": "1h"}})
    assert rrset_values(query(srv.dns_port, "cached.example")) == ["192.0.2.8"]
    up.mode = "silent"
    time.sleep(1.2)   # the cached answer expires (TTL 1 s)
    stale = query(srv.dns_port, "cached.example", timeout=5)
    assert rrset_values(stale) == ["192.0.2.8"] and stale.answer[0].ttl == 30   # RFC 8767 stale TTL
    never = query(srv.dns_port, "never-seen.example", timeout=5)
    assert never.rcode() == dns.rcode.SERVFAIL
    assert up.count("never-seen.example") == 1   # each upstream is given the timeout once, not retried
