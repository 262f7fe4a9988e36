"""--workers: several processes share the DNS port and serve the same, current catalog."""
import os
import re
import socket
import subprocess
import time

import dns.message

from harness import ServerProcess, metric_samples, wait_until


def soa_answers(http):
    key = ("meshdns_dns_queries_total", (("kind", "apex"), ("qtype", "SOA"), ("rcode", "NOERROR")))
    return metric_samples(http).get(key, 0.0)


def ask_from_many_ports(port, name, n=120, rdtype="A"):
    """One query per fresh socket (new source port), so SO_REUSEPORT spreads them over processes."""
    answers = []
    for i in range(n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(dns.message.make_query(name, rdtype, id=i).to_wire(), ("127.0.0.1", port))
            msg = dns.message.from_wire(s.recv(4096))
            answers.append(tuple(sorted(rd.to_text() for rrset in msg.answer for rd in rrset)))
    return answers


def owners_of_port(port):
    out = subprocess.run(["ss", "-Hulpn", f"sport = :{port}"], capture_output=True, text=True).stdout
    return set(re.findall(r"pid=(\d+)", out))


def test_workers_share_port_and_follow_changes(tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "a.toml").write_text('[[service]]\nname = "app"\naddress = "10.3.0.1"\nport = 80\n')
    proc = ServerProcess("--zones", str(zones), "--data-dir", str(tmp_path / "d"), "--workers", "3").start()
    try:
        deadline = time.monotonic() + 20
        while len(owners_of_port(proc.dns_port)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(owners_of_port(proc.dns_port)) == 3   # the primary and two workers
        assert set(ask_from_many_ports(proc.dns_port, "app.service.consul")) == {("10.3.0.1",)}
        (zones / "a.toml").write_text('[[service]]\nname = "app"\naddress = "10.3.0.2"\nport = 80\n')
        st = (zones / "a.toml").stat()
        os.utime(zones / "a.toml", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if set(ask_from_many_ports(proc.dns_port, "app.service.consul", 60)) == {("10.3.0.2",)}:
                break
            time.sleep(0.2)
        # every process answers the new address, and SOA serials agree across processes
        assert set(ask_from_many_ports(proc.dns_port, "app.service.consul")) == {("10.3.0.2",)}
        serials = set()
        for i in range(60):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.sendto(dns.message.make_query("consul", "SOA", id=i).to_wire(), ("127.0.0.1", proc.dns_port))
                serials.add(dns.message.from_wire(s.recv(4096)).answer[0][0].serial)
        assert len(serials) == 1
        # /metrics counts the answers of every process, workers included (60 SOA queries above + 90)
        ask_from_many_ports(proc.dns_port, "consul", 90, rdtype="SOA")
        wait_until(lambda: soa_answers(proc.http) == 150, timeout=6)
    finally:
        assert proc.stop() == 0
    assert not owners_of_port(proc.dns_port)  # workers are gone too


def test_metrics_count_the_forwarding_of_every_process(tmp_path, upstreams):
    up = upstreams().add("example.internal", "A", "10.50.0.1", ttl=300)
    proc = ServerProcess("--recursor", up.address, "--data-dir", str(tmp_path / "d"), "--workers", "3").start()
    try:
        wait_until(lambda: len(owners_of_port(proc.dns_port)) == 3, timeout=20, what="three processes on the port")
        assert set(ask_from_many_ports(proc.dns_port, "example.internal", 90)) == {("10.50.0.1",)}
        # Each process has its own cache, so each asked upstream once; every answer is counted
        # whichever process gave it (workers report every 2 s).
        asked = len(up.queries)
        assert 2 <= asked <= 3

        def counted():
            m = metric_samples(proc.http)
            cache = {r: m.get(("meshdns_forward_cache_total", (("result", r),)), 0) for r in ("hit", "miss")}
            replies = m.get(("meshdns_forward_replies_total",
                             (("outcome", "NOERROR"), ("upstream", f"127.0.0.1:{up.port}"))), 0)
            got = {"answered": cache["hit"] + cache["miss"], "misses": cache["miss"], "upstream replies": replies,
                   "cache entries": m[("meshdns_forward_cache_entries", ())]}
            assert got == {"answered": 90, "misses": asked, "upstream replies": asked, "cache entries": asked}, got
            return True

        wait_until(counted, timeout=8, what="forwarding counted")
    finally:
        assert proc.stop() == 0


def test_seeded_answers_are_the_same_from_every_process(tmp_path):
    """With a seed, each process answers a sequence of queries byte for byte as a single process does: the
    first sequence a process answers is the single process's first, its second the second, and so on."""
    zones = tmp_path / "zones"
    zones.mkdir()
    five = "".join(f'[[service]]\nname = "five"\naddress = "10.5.0.{i}"\nport = 80\n' for i in range(5))
    two = "".join(f'[[service]]\nname = "two"\naddress = "10.6.0.{i}"\nport = 81\n' for i in range(2))
    split = ('[[split]]\nname = "halves"\n'
             'targets = [{ service = "five", weight = 1 }, { service = "two", weight = 1 }]\n')
    (zones / "a.toml").write_text(five + two + split)
    config = tmp_path / "meshdns.toml"
    config.write_text("[dns]\nrng_seed = 11\n")
    questions = [dns.message.make_query(name, rdtype, id=0).to_wire()
                 for name, rdtype in [("halves.service.consul", "A"), ("five.service.consul", "SRV"),
                                      ("five.service.consul", "A"), ("halves.service.consul", "SRV")] * 6]

    def sequence(sock, port):
        out = []
        for i, wire in enumerate(questions):
            sock.sendto(i.to_bytes(2, "big") + wire[2:], ("127.0.0.1", port))
            out.append(sock.recv(4096)[2:])
        return tuple(out)

    def serve(*args):
        return ServerProcess("--config", str(config), "--zones", str(zones), *args).start()

    single, several = serve("--data-dir", str(tmp_path / "a")), None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reference:
            reference.settimeout(2)
            passes = [sequence(reference, single.dns_port) for _ in range(4)]
            assert len(set(passes)) == 4   # the answers vary with the RNG
            several = serve("--data-dir", str(tmp_path / "b"), "--workers", "2")
            wait_until(lambda: len(owners_of_port(several.dns_port)) == 2, timeout=20, what="two processes on the port")
            firsts = sockets = 0
            while firsts < 2 and sockets < 64:   # one socket per sequence: SO_REUSEPORT gives each to one process
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(2)
                    got = sequence(s, several.dns_port)
                sockets += 1
                while got not in passes and len(passes) < sockets + 1:
                    passes.append(sequence(reference, single.dns_port))
                assert got in passes   # a process's n-th sequence is the single process's n-th
                firsts += got == passes[0]
            assert firsts == 2   # both processes answered their first sequence as the single process did
    finally:
        assert single.stop() == 0
        if several is not None:
            assert several.stop() == 0
