"""Abuse resistance at the DNS port: rate limits, ANY, connection caps."""
import socket
import time

import dns.flags
import dns.message
import dns.rdatatype

from harness import query, rrset_values
from meshdns.dns.rrl import RateLimiter


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_rate_limiter_buckets_per_24_with_slip():
    clock = Clock()
    rrl = RateLimiter(rate=5, exempt=("127.0.0.0/8",), clock=clock, slip=2)
    verdicts = [rrl.check("192.0.2.10") for _ in range(11)]
    assert verdicts[:5] == ["send"] * 5
    assert verdicts[5:] == ["drop", "slip", "drop", "slip", "drop", "slip"]
    assert rrl.check("192.0.2.99") == "drop"      # same /24 shares the bucket
    assert rrl.check("198.51.100.1") == "send"    # another network does not
    assert all(rrl.check("127.0.0.1") == "send" for _ in range(100))  # exempt
    clock.now += 1.0
    assert [rrl.check("192.0.2.10") for _ in range(5)] == ["send"] * 5  # refilled after a second


def test_live_rate_limit_slips_tc_and_tcp_still_answers(start_server):
    srv = start_server({"dns": {"rrl_responses_per_second": 5, "rrl_exempt": []}})
    q = dns.message.make_query("oracle-db.service.consul", "A")
    got = {"answer": 0, "tc": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        for i in range(40):
            q.id = i
            s.sendto(q.to_wire(), ("127.0.0.1", srv.dns_port))
        while True:
            try:
                msg = dns.message.from_wire(s.recv(4096))
            except socket.timeout:
                break
            got["tc" if msg.flags & dns.flags.TC else "answer"] += 1
    assert 5 <= got["answer"] <= 7          # the burst, plus what refilled while sending
    assert 10 <= got["tc"] <= 20            # every 2nd over-limit response slips as TC
    # a real client retries over TCP, which is not limited
    assert rrset_values(query(srv.dns_port, "oracle-db.service.consul", tcp=True)) == ["192.168.30.10"]


def test_any_for_outside_names_is_minimal_and_never_forwarded(start_server):
    srv = start_server({"forwarding": {"recursors": ["127.0.0.1:9"]}})
    msg = query(srv.dns_port, "example.com", "ANY")
    assert msg.rcode() == 0
    assert [(rr.rdtype, rr[0].to_text()) for rr in msg.answer] == [(dns.rdatatype.HINFO, '"RFC8482" ""')]


def test_any_for_catalog_names_comes_from_the_catalog(server):
    msg = query(server.dns_port, "legacy-billing.service.consul", "ANY")
    assert sorted(rrset_values(msg)) == ["192.168.28.213", "192.168.28.214"]


def test_tcp_connection_cap(start_server):
    srv = start_server({"dns": {"tcp_max_connections": 3, "tcp_idle_timeout": "5s"}})
    held = [socket.create_connection(("127.0.0.1", srv.dns_port), timeout=3) for _ in range(3)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", srv.dns_port), timeout=3)
        extra.settimeout(3)
        try:
            assert extra.recv(10) == b""   # refused: closed at once
        except ConnectionResetError:
            pass
        extra.close()
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert rrset_values(query(srv.dns_port, "oracle-db.service.consul", tcp=True)) == ["192.168.30.10"]
