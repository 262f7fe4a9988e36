"""Malformed packets: the parser only ever raises WireError, and the live server keeps answering."""
import random
import socket
import struct

import dns.message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import query, rrset_values
from mutation import mutate
from meshdns.dns.wire import WireError, parse_query

VALID = dns.message.make_query("legacy-billing.service.consul", "SRV", use_edns=0).to_wire()


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=600))
def test_parser_never_crashes_on_random_bytes(data):
    try:
        parse_query(data)
    except WireError:
        pass


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
       st.integers(0, len(VALID)))
def test_parser_never_crashes_on_mutated_queries(flips, cut):
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    try:
        parse_query(bytes(data[:cut] if cut else data))
    except WireError:
        pass


def test_compression_loop_and_pointer_past_end():
    header = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 1)
    question = b"\x01a\x00\x00\x01\x00\x01"
    loop = header + question + b"\xc0" + bytes([12 + len(question)]) + b"\x00\x29\x10\x00" + b"\x00" * 6
    for bad in (loop, header + question + b"\xc0\xff", header + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
                header + b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00\x00\x01\x00\x01"):
        try:
            parse_query(bad)
        except WireError as exc:
            assert exc.rcode in (1, None)
        else:
            raise AssertionError(f"accepted {bad!r}")


def test_server_survives_10000_mutated_packets(server):
    rng = random.Random(2026)
    seeds = [VALID, dns.message.make_query("oracle-db.service.consul", "A").to_wire(),
             dns.message.make_query("consul", "SOA", use_edns=1).to_wire()]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for i in range(10_000):
            s.sendto(mutate(rng, seeds[i % len(seeds)]), ("127.0.0.1", server.dns_port))
            if i % 200 == 0:  # drain replies so the socket buffer never fills
                try:
                    while s.recv(65535):
                        pass
                except BlockingIOError:
                    pass
    for _ in range(3):
        assert rrset_values(query(server.dns_port, "oracle-db.service.consul")) == ["192.168.30.10"]
    # TCP too, with a garbage frame first on the same connection
    with socket.create_connection(("127.0.0.1", server.dns_port), timeout=3) as c:
        junk = rng.randbytes(40)
        good = dns.message.make_query("oracle-db.service.consul", "A", id=77).to_wire()
        c.sendall(struct.pack("!H", len(junk)) + junk + struct.pack("!H", len(good)) + good)
        data, msg = b"", None
        while msg is None or msg.id != 77:
            if len(data) >= 2 and len(data) >= 2 + struct.unpack("!H", data[:2])[0]:
                n = struct.unpack("!H", data[:2])[0]
                msg, data = dns.message.from_wire(data[2:2 + n]), data[2 + n:]
                continue
            data += c.recv(4096)
        assert rrset_values(msg) == ["192.168.30.10"]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_\u00b2\u00e9\u0663", min_size=1, max_size=20), min_size=0,
                max_size=6),
       st.sampled_from(["service", "node", "addr", "consul", "in-addr", "corp"]),
       st.sampled_from([1, 2, 5, 6, 12, 13, 16, 28, 33, 255, 65, 999]))
def test_resolver_entry_point_total_on_any_name(labels, kind, qtype):
    """Every name, inside our domains or not, gets a plan: the resolver never raises."""
    from meshdns.catalog.store import Store
    from meshdns.dns.resolver import ResolverOptions, plan
    from meshdns.sources.zones import ZonesSource
    global _STORE
    try:
        store = _STORE
    except NameError:
        from harness import ZONES
        store = _STORE = Store(datacenter="dc1")
        ZonesSource(ZONES, store, datacenter="dc1").reload()
    tail = {"service": ["service", "consul"], "node": ["node", "dc1", "consul"], "addr": ["addr", "consul"],
            "consul": ["consul"], "in-addr": ["in-addr", "arpa"], "corp": ["corp", "internal"]}[kind]
    qname = ".".join(labels + tail) + "."
    p = plan(qname, qtype, store.snapshot, ResolverOptions())
    assert p.forward or p.rcode in (0, 3)
