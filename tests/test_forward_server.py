"""meshdns as a VM's only resolver and as CoreDNS's stub: the real server, dig and dnspython.

Upstreams are scripted servers on 127.0.0.1 (tests/upstream.py); nothing
leaves loopback.
"""
import asyncio
import re

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from harness import ServerProcess, dig, query, rrset_values


def status(out: str) -> str:
    return re.search(r"status: (\w+)", out).group(1)


def flags(out: str) -> set[str]:
    return set(re.search(r";; flags: ([a-z ]+);", out).group(1).split())


def answers(out: str) -> list[str]:
    """The rdata of every answer line dig printed (+noall +answer)."""
    return sorted(line.split()[-1] for line in out.splitlines() if line and not line.startswith(";"))


@pytest.fixture
def vm_estate(start_server, upstreams):
    """meshdns with a recursor and a cluster.local rule, each a scripted upstream."""
    recursor = upstreams(name="recursor")
    cluster = upstreams(name="cluster")
    recursor.add("example.internal", "A", "10.50.0.1", ttl=120)
    recursor.add(".", "NS", "a.root-servers.net.")
    cluster.add("web.cluster.local", "A", "10.96.3.7", ttl=5)
    srv = start_server({"forwarding": {"recursors": [recursor.address], "timeout": "500ms",
                                       "zone": [{"name": "cluster.local", "servers": [cluster.address]}]}})
    return srv, recursor, cluster


def test_vm_flow_forwards_other_names_and_cluster_local_by_rule(vm_estate):
    srv, recursor, cluster = vm_estate
    out = dig(srv.dns_port, "example.internal")
    assert status(out) == "NOERROR" and "ra" in flags(out) and "aa" not in flags(out)
    assert "10.50.0.1" in out
    out = dig(srv.dns_port, "web.cluster.local")
    assert status(out) == "NOERROR" and "10.96.3.7" in out
    assert cluster.count("web.cluster.local") == 1 and recursor.count("web.cluster.local") == 0
    assert recursor.count("example.internal") == 1 and cluster.count("example.internal") == 0
    # our own names are still ours: authoritative, never forwarded
    out = dig(srv.dns_port, "legacy-billing.service.consul", "+noall", "+answer", "+comments")
    assert {"aa", "ra"} <= flags(out)
    assert answers(out) == ["192.168.28.213", "192.168.28.214"]
    out = dig(srv.dns_port, "nosuch.service.consul")
    assert status(out) == "NXDOMAIN" and "aa" in flags(out)
    assert recursor.count() == 1 and cluster.count() == 1


def test_forwarded_answers_are_cached(vm_estate):
    srv, recursor, _ = vm_estate
    for _ in range(3):
        msg = query(srv.dns_port, "Example.Internal", "A")
        assert rrset_values(msg) == ["10.50.0.1"]
        assert msg.question[0].name.to_text() == "Example.Internal."
    assert recursor.count("example.internal") == 1
    missing = [query(srv.dns_port, "missing.internal", "A").rcode() for _ in range(2)]
    assert missing == [dns.rcode.NXDOMAIN] * 2
    assert recursor.count("missing.internal") == 1
    folded = srv.app.handler.forwarder.stats.cache
    assert folded["hit"] == 3 and folded["miss"] == 2


def test_repeated_forwarded_queries_show_ttls_counting_down(vm_estate):
    """The same packet asked again and again (as stub resolvers do) is answered from memory, but the TTL
    it shows still counts down with the cache entry's age, and every reply carries the asker's ID."""
    import time
    srv, recursor, _ = vm_estate
    ttls = set()
    deadline = time.monotonic() + 2.5
    asked = 0
    while time.monotonic() < deadline:
        msg = query(srv.dns_port, "example.internal", "A")
        assert rrset_values(msg) == ["10.50.0.1"]
        ttls.add(msg.answer[0].ttl)
        asked += 1
        time.sleep(0.02)
    assert recursor.count("example.internal") == 1
    assert len(ttls) >= 2 and max(ttls) <= 120 and min(ttls) <= 118
    assert srv.app.handler.forwarder.stats.cache["hit"] == asked - 1


def test_all_upstreams_failing_is_servfail(vm_estate):
    srv, recursor, _ = vm_estate
    recursor.mode = "servfail"
    out = dig(srv.dns_port, "down.example.org")
    assert status(out) == "SERVFAIL"
    recursor.mode = "silent"
    assert query(srv.dns_port, "down2.example.org", tcp=True).rcode() == dns.rcode.SERVFAIL


def test_tcp_is_served_for_own_and_forwarded_names(vm_estate):
    srv, recursor, _ = vm_estate
    out = dig(srv.dns_port, "+tcp", "legacy-billing.service.consul", "SRV")
    assert status(out) == "NOERROR" and "aa" in flags(out)
    out = dig(srv.dns_port, "+tcp", "example.internal")
    assert status(out) == "NOERROR" and "10.50.0.1" in out
    assert recursor.count("example.internal", transport="tcp") == 1


def test_big_forwarded_answer_truncates_over_udp_and_comes_whole_over_tcp(vm_estate):
    srv, recursor, _ = vm_estate
    addresses = [f"10.60.{i // 200}.{i % 200 + 1}" for i in range(100)]
    recursor.add("big.example.org", "A", *addresses)
    recursor.tc_over_udp = True
    udp = query(srv.dns_port, "big.example.org", "A", edns=None)
    assert udp.flags & dns.flags.TC
    # dig falls back to TCP on TC, as every stub does
    out = dig(srv.dns_port, "big.example.org", "+noall", "+answer")
    assert answers(out) == sorted(addresses)


def test_reverse_lookup_local_or_forwarded(vm_estate):
    srv, recursor, _ = vm_estate
    recursor.add("1.0.50.10.in-addr.arpa", "PTR", "host.example.internal.")
    out = dig(srv.dns_port, "-x", "10.50.0.1", "+short")
    assert out.strip() == "host.example.internal."
    out = dig(srv.dns_port, "-x", "192.168.28.213", "+short")
    assert "billing-vm-1.node.dc1.consul." in out
    assert recursor.count("213.28.168.192.in-addr.arpa") == 0


def test_recursion_only_for_allowed_clients(start_server, upstreams):
    up = upstreams().add("example.internal", "A", "10.50.0.1")
    srv = start_server({"forwarding": {"recursors": [up.address], "allow_recursion": ["127.0.0.1/32"]}})
    denied = query(srv.dns_port, "example.internal", source="127.0.0.2")
    assert denied.rcode() == dns.rcode.REFUSED and not denied.answer
    assert up.count() == 0
    out = dig(srv.dns_port, "-b", "127.0.0.2", "example.internal")
    assert status(out) == "REFUSED"
    allowed = query(srv.dns_port, "example.internal", source="127.0.0.1")
    assert allowed.rcode() == dns.rcode.NOERROR and rrset_values(allowed) == ["10.50.0.1"]
    assert up.count() == 1
    # a client outside allow_recursion still gets our own names, without RA
    own = query(srv.dns_port, "legacy-billing.service.consul", source="127.0.0.2")
    assert own.rcode() == dns.rcode.NOERROR and not own.flags & dns.flags.RA and own.flags & dns.flags.AA
    assert srv.app.handler.stats.refused["client"] == 2


def test_default_config_refuses_other_names(server):
    out = dig(server.dns_port, "example.internal")
    assert status(out) == "REFUSED"
    assert server.app.handler.forwarder is None
    assert server.app.handler.stats.refused["no_upstream"] == 1


@pytest.mark.parametrize("with_recursor", [False, True])
def test_coredns_health_probe_gets_a_reply(start_server, upstreams, with_recursor):
    """CoreDNS's forward plugin probes `. IN NS` (RD set); any reply, whatever its rcode, is healthy."""
    overrides = {}
    if with_recursor:
        up = upstreams().add(".", "NS", "a.root-servers.net.")
        overrides = {"forwarding": {"recursors": [up.address]}}
    srv = start_server(overrides)
    for tcp in (False, True):
        out = dig(srv.dns_port, ".", "NS", "+tcp" if tcp else "+notcp")
        assert status(out) == ("NOERROR" if with_recursor else "REFUSED")
    if with_recursor:
        assert "a.root-servers.net." in out


def test_coredns_health_probe_is_answered_within_a_second_when_recursors_hang(start_server, upstreams):
    """CoreDNS waits 1 s for the probe's reply; a hung recursor must not make meshdns look dead."""
    up = upstreams()
    up.mode = "silent"
    srv = start_server({"forwarding": {"recursors": [up.address], "timeout": "2s"}})
    for tcp in (False, True):
        msg = query(srv.dns_port, ".", "NS", timeout=1.0, tcp=tcp)   # dnspython raises if no reply in 1 s
        assert msg.rcode() == dns.rcode.SERVFAIL
    assert up.count(".", "NS") >= 1


def test_coredns_loop_probe_is_nxdomain(server):
    """The loop plugin sends `<random>.<random>.<zone> HINFO` and must see NXDOMAIN, not itself."""
    for name in ("7395820147.3867194023.consul.", "12.34.consul."):
        msg = query(server.dns_port, name, "HINFO")
        assert msg.rcode() == dns.rcode.NXDOMAIN
        assert msg.flags & dns.flags.AA
        assert [rrset.rdtype for rrset in msg.authority] == [dns.rdatatype.SOA]
        msg = query(server.dns_port, name, "HINFO", tcp=True)
        assert msg.rcode() == dns.rcode.NXDOMAIN


def test_recursor_flag_on_the_command_line(upstreams, tmp_path):
    up = upstreams().add("example.internal", "A", "10.50.0.1")
    proc = ServerProcess("--recursor", up.address, "--data-dir", str(tmp_path / "data")).start()
    try:
        out = dig(proc.dns_port, "example.internal", "+short")
        assert out.strip() == "10.50.0.1"
    finally:
        assert proc.stop() == 0


def test_hostname_instance_gets_cname_and_resolved_records(start_server, upstreams):
    up = upstreams()
    up.add("gateway.payments.example.com", "CNAME", "edge.cdn.example.net.", ttl=600)
    up.add("edge.cdn.example.net", "A", "203.0.113.7", ttl=60)
    srv = start_server({"forwarding": {"recursors": [up.address], "allow_recursion": ["127.0.0.1/32"]}})
    out = dig(srv.dns_port, "payments-gateway.service.consul", "+noall", "+answer")
    lines = [line.split() for line in out.splitlines() if line and not line.startswith(";")]
    assert [(r[0], r[3], r[4]) for r in lines] == [
        ("payments-gateway.service.consul.", "CNAME", "gateway.payments.example.com."),
        ("gateway.payments.example.com.", "CNAME", "edge.cdn.example.net."),
        ("edge.cdn.example.net.", "A", "203.0.113.7")]
    # no AAAA upstream: the CNAME chain, no addresses
    out = dig(srv.dns_port, "payments-gateway.service.consul", "AAAA", "+short")
    assert out.split() == ["gateway.payments.example.com.", "edge.cdn.example.net."]
    # a client that may not recurse gets the CNAME only, and nothing is sent upstream for it
    before = up.count()
    msg = query(srv.dns_port, "payments-gateway.service.consul", source="127.0.0.2")
    assert rrset_values(msg) == ["gateway.payments.example.com."]
    assert up.count() == before


def test_hostname_instance_without_forwarding_is_a_bare_cname(server):
    out = dig(server.dns_port, "payments-gateway.service.consul", "+short")
    assert out.split() == ["gateway.payments.example.com."]


def test_hostname_instance_with_unresolvable_target_is_a_bare_cname(start_server, upstreams):
    up = upstreams()            # knows nothing: NXDOMAIN for the target
    srv = start_server({"forwarding": {"recursors": [up.address], "timeout": "300ms"}})
    msg = query(srv.dns_port, "payments-gateway.service.consul")
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    assert rrset_values(msg) == ["gateway.payments.example.com."]
    assert up.count("gateway.payments.example.com", "A") == 1
    up.mode = "silent"          # and when upstream is down: still the CNAME, after the timeout
    msg = query(srv.dns_port, "payments-gateway.service.consul", "AAAA", timeout=6)
    assert rrset_values(msg) == ["gateway.payments.example.com."]


async def test_hundred_concurrent_clients_one_upstream_query(start_server, upstreams):
    up = upstreams().add("busy.example.org", "A", "10.70.0.1")
    up.delay = 0.3          # every client's query arrives while the first is still upstream
    srv = start_server({"forwarding": {"recursors": [up.address]}})

    async def ask(i):
        q = dns.message.make_query("busy.example.org", "A", id=i)
        return await dns.asyncquery.udp(q, "127.0.0.1", port=srv.dns_port, timeout=5)

    replies = await asyncio.gather(*(ask(i) for i in range(100)))
    assert [r.id for r in replies] == list(range(100))
    assert all(rrset_values(r) == ["10.70.0.1"] for r in replies)
    assert up.count() == 1
