"""The real server on 127.0.0.1 (port 0) answering every name form of DESIGN §1 from zones/."""
import socket
import struct

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from harness import dig, query, rrset_values


def rcode(msg):
    return dns.rcode.to_text(msg.rcode())


def test_service_a(server):
    msg = query(server.dns_port, "legacy-billing.service.consul", "A")
    assert rcode(msg) == "NOERROR"
    assert msg.flags & dns.flags.AA
    assert sorted(rrset_values(msg)) == ["192.168.28.213", "192.168.28.214"]


def test_service_srv_with_additional(server):
    msg = query(server.dns_port, "legacy-billing.service.consul", "SRV")
    # the instances use their nodes' addresses: the target is the node, as Consul answers
    assert sorted(rrset_values(msg)) == ["1 10 8080 billing-vm-1.node.dc1.consul.",
                                         "1 10 8080 billing-vm-2.node.dc1.consul."]
    extra = {rr.name.to_text(): [rd.to_text() for rd in rr] for rr in msg.additional}
    assert extra == {"billing-vm-1.node.dc1.consul.": ["192.168.28.213"],
                     "billing-vm-2.node.dc1.consul.": ["192.168.28.214"]}


def test_dig_srv_and_a(server):
    out = dig(server.dns_port, "legacy-billing.service.consul", "SRV", "+noall", "+answer", "+additional")
    assert "SRV\t1 10 8080 billing-vm-1.node.dc1.consul." in out
    assert "billing-vm-2.node.dc1.consul. 0\tIN\tA\t192.168.28.214" in out
    assert dig(server.dns_port, "+short", "oracle-db.service.consul").split() == ["192.168.30.10"]


def test_aaaa_and_nodata(server):
    assert rrset_values(query(server.dns_port, "ledger.service.consul", "AAAA")) == ["fd00:28::15"]
    msg = query(server.dns_port, "ledger.service.consul", "A")
    assert rcode(msg) == "NOERROR" and msg.answer == []
    assert [rr.rdtype for rr in msg.authority] == [dns.rdatatype.SOA]


def test_nxdomain_has_soa(server):
    out = dig(server.dns_port, "no-such-thing.service.consul", "+noall", "+comments", "+authority")
    assert "status: NXDOMAIN" in out
    assert "consul.\t\t\t0\tIN\tSOA\tns.consul. hostmaster.consul." in out


def test_tag_filter_and_rfc2782(server):
    assert rrset_values(query(server.dns_port, "replica.redis.service.consul")) == ["192.168.30.22"]
    srv = rrset_values(query(server.dns_port, "_redis._primary.service.consul", "SRV"))
    assert srv == ["1 1 6379 c0a81e15.addr.dc1.consul."]
    assert len(rrset_values(query(server.dns_port, "_redis._tcp.service.consul", "SRV"))) == 2


def test_datacenter_label(server):
    assert rrset_values(query(server.dns_port, "oracle-db.service.dc1.consul")) == ["192.168.30.10"]
    assert rcode(query(server.dns_port, "oracle-db.service.mars.consul")) == "NXDOMAIN"


def test_node_a_and_txt_meta(server):
    assert rrset_values(query(server.dns_port, "billing-vm-1.node.consul")) == ["192.168.28.213"]
    assert sorted(rrset_values(query(server.dns_port, "billing-vm-1.node.dc1.consul", "TXT"))) == \
        ['"os=rhel8"', '"rack=r12"']


def test_addr(server):
    assert rrset_values(query(server.dns_port, "c0a81cd5.addr.dc1.consul")) == ["192.168.28.213"]
    assert rrset_values(query(server.dns_port, "fd000028000000000000000000000015.addr.consul", "AAAA")) == \
        ["fd00:28::15"]


def test_soa_and_ns(server):
    soa = rrset_values(query(server.dns_port, "consul", "SOA"))[0].split()
    assert soa[:2] == ["ns.consul.", "hostmaster.consul."] and int(soa[2]) >= 1
    assert rrset_values(query(server.dns_port, "consul", "NS")) == ["ns.consul."]


def test_ptr(server):
    # a node's IP names the node only (Consul looks at nodes first); an instance's own IP names its service
    assert dig(server.dns_port, "+short", "-x", "192.168.28.213").split() == ["billing-vm-1.node.dc1.consul."]
    assert dig(server.dns_port, "+short", "-x", "192.168.30.21").split() == ["redis.service.dc1.consul."]


def test_hostname_instance_is_cname(server):
    msg = query(server.dns_port, "payments-gateway.service.consul", "A")
    assert [(rr.rdtype, rr[0].to_text()) for rr in msg.answer] == [(dns.rdatatype.CNAME, "gateway.payments.example.com.")]


def test_case_insensitive_and_question_echoed(server):
    msg = query(server.dns_port, "Legacy-BILLING.Service.CONSUL", "A")
    assert msg.question[0].name.to_text() == "Legacy-BILLING.Service.CONSUL."
    assert msg.answer[0].name.to_text() == "Legacy-BILLING.Service.CONSUL."
    assert len(rrset_values(msg)) == 2
    out = dig(server.dns_port, "LeGaCy-BiLlInG.sErViCe.cOnSuL", "+noall", "+question", "+answer")
    assert ";LeGaCy-BiLlInG.sErViCe.cOnSuL.\tIN\tA" in out
    assert "LeGaCy-BiLlInG.sErViCe.cOnSuL. 0 IN\tA\t192.168.28.213" in out


def test_master_zone_served_authoritatively(server):
    msg = query(server.dns_port, "intranet.corp.internal", "A")
    assert msg.flags & dns.flags.AA and sorted(rrset_values(msg)) == ["192.168.1.10", "192.168.1.11"]
    wiki = query(server.dns_port, "wiki.corp.internal", "A")
    assert [rr.rdtype for rr in wiki.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert rrset_values(query(server.dns_port, "_ldap._tcp.corp.internal", "SRV")) == ["0 5 389 ldap.corp.internal."]
    assert rrset_values(query(server.dns_port, "mail.corp.internal", "MX")) == ["10 intranet.corp.internal."]
    missing = query(server.dns_port, "nothing.corp.internal", "A")
    assert rcode(missing) == "NXDOMAIN"
    assert missing.authority[0].to_text().startswith("corp.internal. 60 IN SOA ns1.corp.internal.")


def test_outside_names_refused_without_forwarding(server):
    assert rcode(query(server.dns_port, "example.com", "A")) == "REFUSED"


def test_edns_echo_and_badvers(server):
    msg = query(server.dns_port, "oracle-db.service.consul", "A", edns=0, payload=4096)
    assert msg.edns == 0 and msg.payload == 1232
    q = dns.message.make_query("oracle-db.service.consul", "A", use_edns=1)
    reply = dns.query.udp(q, "127.0.0.1", port=server.dns_port, timeout=3)
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0
    plain = query(server.dns_port, "oracle-db.service.consul", "A", edns=None)
    assert plain.edns == -1 and rrset_values(plain) == ["192.168.30.10"]


def test_edns_unknown_option_ignored(server):
    q = dns.message.make_query("oracle-db.service.consul", "A", use_edns=0,
                               options=[dns.edns.GenericOption(65001, b"hello")])
    reply = dns.query.udp(q, "127.0.0.1", port=server.dns_port, timeout=3)
    assert rrset_values(reply) == ["192.168.30.10"]


def test_truncation_then_full_answer_over_tcp(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "big.toml").write_text("".join(
        f'[[service]]\nname = "big"\naddress = "10.20.{i // 250}.{i % 250 + 1}"\nport = {9000 + i}\n\n'
        for i in range(100)))
    srv = start_server(zones=zones)
    udp = query(srv.dns_port, "big.service.consul", "SRV", edns=None)
    assert udp.flags & dns.flags.TC
    assert 0 < len(rrset_values(udp)) < 100
    full = query(srv.dns_port, "big.service.consul", "SRV", tcp=True)
    assert not full.flags & dns.flags.TC
    assert len(rrset_values(full)) == 100 and len(full.additional) == 100
    # EDNS raises the UDP limit to min(client's size, ours = 1232); A answers still get TC past it
    a512 = query(srv.dns_port, "big.service.consul", "A", edns=None)
    assert a512.flags & dns.flags.TC and len(rrset_values(a512)) == (512 - 12 - 24) // 16
    a4k = query(srv.dns_port, "big.service.consul", "A", edns=0, payload=4096)
    assert a4k.flags & dns.flags.TC and len(rrset_values(a4k)) == (1232 - 12 - 24 - 11) // 16
    out = dig(srv.dns_port, "big.service.consul", "SRV", "+noedns", "+ignore", "+noall", "+comments")
    assert " tc" in out.split("flags:")[1].split(";")[0]


def test_udp_payload_setting_allows_larger_udp_answers(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "big.toml").write_text("".join(
        f'[[service]]\nname = "big"\naddress = "10.22.0.{i + 1}"\nport = 80\n\n' for i in range(100)))
    srv = start_server({"dns": {"udp_payload": 4096}}, zones=zones)
    a4k = query(srv.dns_port, "big.service.consul", "A", edns=0, payload=4096)
    assert not a4k.flags & dns.flags.TC and len(rrset_values(a4k)) == 100


def test_dig_falls_back_to_tcp_on_tc(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "big.toml").write_text("".join(
        f'[[service]]\nname = "big"\naddress = "10.21.0.{i + 1}"\nport = 80\n\n' for i in range(100)))
    srv = start_server(zones=zones)
    out = dig(srv.dns_port, "+short", "+noedns", "big.service.consul", "SRV")
    assert len(out.split("\n")) - 1 == 100


def _raw(port, payload, timeout=2.0):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def test_formerr_on_garbage_and_notimp(server):
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    reply = _raw(server.dns_port, header + b"\x05abc")  # label runs past the end
    assert reply is not None and reply[:2] == b"\x12\x34" and reply[3] & 0xF == 1  # FORMERR
    two = struct.pack("!HHHHHH", 7, 0, 2, 0, 0, 0) + (b"\x01a\x00\x00\x01\x00\x01" * 2)
    assert _raw(server.dns_port, two)[3] & 0xF == 1
    notify = struct.pack("!HHHHHH", 8, 4 << 11, 1, 0, 0, 0) + b"\x01a\x00\x00\x06\x00\x01"
    assert _raw(server.dns_port, notify)[3] & 0xF == 4  # NOTIMP
    assert _raw(server.dns_port, b"\x00", timeout=0.3) is None  # too short to answer: dropped
    # and it still answers
    assert rrset_values(query(server.dns_port, "oracle-db.service.consul")) == ["192.168.30.10"]


def test_tcp_several_queries_on_one_connection(server):
    with socket.create_connection(("127.0.0.1", server.dns_port), timeout=3) as s:
        for qid, name in ((1, "oracle-db.service.consul"), (2, "redis.service.consul"), (3, "nope.service.consul")):
            q = dns.message.make_query(name, "A", id=qid).to_wire()
            s.sendall(struct.pack("!H", len(q)) + q)
        replies = {}
        for _ in range(3):
            (n,) = struct.unpack("!H", _recv_exact(s, 2))
            msg = dns.message.from_wire(_recv_exact(s, n))
            replies[msg.id] = msg
    assert rrset_values(replies[1]) == ["192.168.30.10"]
    assert sorted(rrset_values(replies[2])) == ["192.168.30.21", "192.168.30.22"]
    assert replies[3].rcode() == dns.rcode.NXDOMAIN


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def test_tcp_idle_connection_closed(start_server):
    srv = start_server({"dns": {"tcp_idle_timeout": "300ms"}})
    with socket.create_connection(("127.0.0.1", srv.dns_port), timeout=3) as s:
        s.sendall(b"\x00")  # half a length prefix, then silence (slow loris)
        s.settimeout(3)
        assert s.recv(10) == b""  # server closed it


@pytest.mark.parametrize("limit", [1, 2])
def test_a_record_limit(start_server, limit):
    srv = start_server({"dns": {"a_record_limit": limit}})
    assert len(rrset_values(query(srv.dns_port, "redis.service.consul"))) == limit


HOSTNAMES = '''
[[node]]
name = "db-1"
address = "10.30.0.5"

[[service]]
name = "wiki-alias"
address = "wiki.corp.test"
port = 443

[[service]]
name = "db-alias"
address = "db-1.node.consul"
port = 5432

[[service]]
name = "missing-alias"
address = "nothere.corp.test"
port = 80

[[service]]
name = "mixed"
address = "10.30.0.9"
port = 80

[[service]]
name = "mixed"
address = "api.example.org"
port = 443
'''

CORP_TEST = '''$ORIGIN corp.test.
$TTL 300
@        IN SOA ns1 hostmaster 1 3600 600 86400 60
intranet IN A 10.31.0.10
         IN A 10.31.0.11
wiki     IN CNAME intranet
'''


@pytest.fixture
def hostnames(start_server, upstreams, tmp_path):
    """Hostname instances pointing into our own names, and a recursor that must never be asked for them."""
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "hosts.toml").write_text(HOSTNAMES)
    (zones / "corp.test.zone").write_text(CORP_TEST)
    recursor = upstreams(name="recursor")
    recursor.add("api.example.org", "A", "10.99.0.1")
    srv = start_server({"forwarding": {"recursors": [recursor.address], "timeout": "500ms"}}, zones=zones)
    return srv, recursor


def test_hostname_in_our_zone_is_cname_plus_records_without_recursion(hostnames):
    srv, recursor = hostnames
    msg = query(srv.dns_port, "wiki-alias.service.consul", "A", rd=True)
    assert [(rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype), sorted(rd.to_text() for rd in rr))
            for rr in msg.answer] == [
        ("wiki-alias.service.consul.", "CNAME", ["wiki.corp.test."]),
        ("wiki.corp.test.", "CNAME", ["intranet.corp.test."]),
        ("intranet.corp.test.", "A", ["10.31.0.10", "10.31.0.11"])]
    out = dig(srv.dns_port, "+short", "db-alias.service.consul")
    assert out.split() == ["db-1.node.consul.", "10.30.0.5"]
    # a name our zone does not have is not asked upstream either: the CNAME alone
    missing = query(srv.dns_port, "missing-alias.service.consul", "A", rd=True)
    assert [rr.rdtype for rr in missing.answer] == [dns.rdatatype.CNAME]
    assert recursor.count() == 0


def test_never_a_cname_beside_addresses(hostnames):
    srv, recursor = hostnames
    for _ in range(10):
        assert dig(srv.dns_port, "+short", "mixed.service.consul").split() == ["10.30.0.9"]
    aaaa = query(srv.dns_port, "mixed.service.consul", "AAAA")
    assert rcode(aaaa) == "NOERROR" and aaaa.answer == []            # NODATA, not a CNAME
    assert sorted(rrset_values(query(srv.dns_port, "mixed.service.consul", "SRV"))) == [
        "1 1 443 api.example.org.", "1 1 80 0a1e0009.addr.dc1.consul."]


def test_srv_for_a_hostname_we_serve_has_its_records_in_additional(hostnames):
    srv, recursor = hostnames
    msg = query(srv.dns_port, "wiki-alias.service.consul", "SRV")
    assert rrset_values(msg) == ["1 1 443 wiki.corp.test."]
    assert [(rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype), sorted(rd.to_text() for rd in rr))
            for rr in msg.additional] == [("wiki.corp.test.", "CNAME", ["intranet.corp.test."]),
                                          ("intranet.corp.test.", "A", ["10.31.0.10", "10.31.0.11"])]
    out = dig(srv.dns_port, "db-alias.service.consul", "SRV", "+noall", "+additional")
    assert "db-1.node.consul.\t0\tIN\tA\t10.30.0.5" in out
    assert recursor.count() == 0


def test_udp_srv_trimmed_to_whole_srv_and_address_pairs(start_server, tmp_path):
    """As Consul: a trimmed SRV answer keeps each SRV record with its target's address, and sets TC."""
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "big.toml").write_text("".join(
        f'[[node]]\nname = "vm-{i}"\naddress = "10.40.0.{i + 1}"\n\n'
        f'[[service]]\nname = "big"\nnode = "vm-{i}"\nport = 80\n\n'
        f'[[service]]\nname = "big"\naddress = "fd00:40::{i + 1:x}"\nport = 81\n\n' for i in range(40)))
    srv = start_server(zones=zones)
    for edns, payload in ((None, 512), (0, 1232), (0, 700)):
        msg = query(srv.dns_port, "big.service.consul", "SRV", edns=edns, payload=payload)
        assert msg.flags & dns.flags.TC
        targets = sorted(rd.target.to_text() for rrset in msg.answer for rd in rrset)
        addressed = sorted(rr.name.to_text() for rr in msg.additional for _ in rr)
        assert 0 < len(targets) < 80 and targets == addressed, (payload, targets, addressed)
        assert len(msg.to_wire()) <= payload
    out = dig(srv.dns_port, "big.service.consul", "SRV", "+noedns", "+ignore", "+noall", "+answer", "+additional")
    lines = [line.split("\t") for line in out.splitlines() if line]
    srv_targets = sorted(line[-1].split()[-1] for line in lines if "SRV" in line)
    assert srv_targets and srv_targets == sorted(line[0].split()[0] for line in lines if "SRV" not in line)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_address_in_use_names_the_dns_address_port_and_protocol(tmp_path, proto):
    import subprocess
    import sys
    from harness import ROOT
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if proto == "tcp":
            taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "meshdns", "serve", "--dns", f"127.0.0.1:{port}",
                              "--http", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert f"cannot listen for DNS on 127.0.0.1:{port} ({proto}): address already in use" in out.stderr, out.stderr
