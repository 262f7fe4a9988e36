"""Answers that depend on who asks, over the wire: same-zone answers and intention views (DESIGN §10).

Clients are distinct loopback addresses (every 127.0.0.0/8 address is local on Linux): each query's
socket is bound to 127.0.0.11, .12, ..., and the catalog holds instances at those addresses.
"""
import logging
import socket
import struct

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from harness import ServerProcess, api, metric_samples, query, rrset_values, wait_until

WEB_A, API_A, API_B, NOBODY, OFFICE_B = "127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14", "127.0.0.17"
VIEWS = {"dns": {"prefer_same_zone": True, "enforce_intentions": True, "rng_seed": 5},
         "locality": [{"cidr": "127.0.0.16/28", "zone": "b"}]}
DB_A1, DB_A2, DB_B1 = "10.9.1.1", "10.9.1.2", "10.9.2.1"


def register(base, body):
    assert api(base, "PUT", "/v1/agent/service/register", body).status == 200


def estate(base):
    """db in zones a (two) and b (one), with TTL checks; clients: web and api in zone a (service meta),
    api in zone b (its node's meta); db denied to web (the wildcard listed first: the exact name wins)."""
    for iid, address, zone in (("db-a1", DB_A1, "a"), ("db-a2", DB_A2, "a"), ("db-b1", DB_B1, "b")):
        register(base, {"Name": "db", "ID": iid, "Address": address, "Port": 5432, "Meta": {"zone": zone},
                        "Tags": ["v1"], "Check": {"TTL": "10m", "Status": "passing"}})
    register(base, {"Name": "web", "ID": "web-1", "Address": WEB_A, "Port": 80, "Meta": {"zone": "a"}})
    register(base, {"Name": "api", "ID": "api-1", "Address": API_A, "Port": 80, "Meta": {"zone": "a"}})
    body = {"Node": "vm-b", "Address": API_B, "NodeMeta": {"zone": "b"},
            "Service": {"Service": "api", "ID": "api-2", "Port": 80}}
    assert api(base, "PUT", "/v1/catalog/register", body).status == 200
    entry = {"Kind": "service-intentions", "Name": "db",
             "Sources": [{"Name": "*", "Action": "allow"}, {"Name": "web", "Action": "deny"}]}
    assert api(base, "PUT", "/v1/config", entry).status == 200
    assert api(base, "POST", "/v1/query", {"Name": "primary", "Service": {"Service": "db"}}).status == 200


@pytest.fixture
def srv(start_server, tmp_path):
    server = start_server(VIEWS, zones=tmp_path / "zones")
    estate(server.http)
    return server


def addresses(port, name, source, rdtype="A", **kw):
    reply = query(port, name, rdtype, source=source, **kw)
    return dns.rcode.to_text(reply.rcode()), sorted(rrset_values(reply))


def priorities(port, name, source):
    """{target address: SRV priority}."""
    reply = query(port, name, "SRV", source=source)
    glue = {r.name.to_text(): r[0].address for r in reply.additional if r.rdtype == dns.rdatatype.A}
    return {glue[rd.target.to_text()]: rd.priority for rrset in reply.answer for rd in rrset}


def fail(base, check_id, status="fail"):
    assert api(base, "PUT", f"/v1/agent/check/{status}/service:{check_id}").status == 200


def counters(base, name):
    return {labels: v for (sample, labels), v in metric_samples(base).items() if sample == name}


def test_clients_get_their_zones_answers_and_spill_over_when_they_fail(srv):
    port, base = srv.dns_port, srv.http
    both = ("NOERROR", [DB_A1, DB_A2])
    assert addresses(port, "db.service.consul", API_A) == both
    assert addresses(port, "db.service.consul", API_B) == ("NOERROR", [DB_B1])        # its node's zone
    assert addresses(port, "db.service.consul", OFFICE_B) == ("NOERROR", [DB_B1])     # [[locality]]
    assert addresses(port, "db.service.consul", NOBODY) == ("NOERROR", [DB_A1, DB_A2, DB_B1])  # no zone
    # every name form: tags, RFC 2782 (SRV), prepared queries
    assert addresses(port, "primary.query.consul", API_B) == ("NOERROR", [DB_B1])
    assert priorities(port, "db.service.consul", API_A) == {DB_A1: 1, DB_A2: 1, DB_B1: 2}
    assert priorities(port, "_db._tcp.service.consul", API_B) == {DB_A1: 2, DB_A2: 2, DB_B1: 1}
    assert priorities(port, "db.service.consul", NOBODY) == {DB_A1: 1, DB_A2: 1, DB_B1: 1}

    # zone b's only instance fails: its clients get the others (all at priority 1); it comes back: theirs again
    fail(base, "db-b1")
    wait_until(lambda: addresses(port, "db.service.consul", API_B) == both, what="spill-over")
    assert priorities(port, "db.service.consul", API_B) == {DB_A1: 1, DB_A2: 1}
    assert addresses(port, "db.service.consul", API_A) == both
    fail(base, "db-a1")
    wait_until(lambda: addresses(port, "db.service.consul", API_A) == ("NOERROR", [DB_A2]), what="one left in a")
    fail(base, "db-b1", "pass")
    wait_until(lambda: addresses(port, "db.service.consul", API_B) == ("NOERROR", [DB_B1]), what="b is back")

    # the counter: answers to clients with a zone, same-zone or not; none for a client without one
    before = counters(base, "meshdns_locality_answers_total")
    for _ in range(3):
        addresses(port, "db.service.consul", API_A)       # same zone
        addresses(port, "db.service.consul", NOBODY)      # not counted
    fail(base, "db-a2")
    wait_until(lambda: addresses(port, "db.service.consul", API_A) == ("NOERROR", [DB_B1]), what="a is empty")
    after = counters(base, "meshdns_locality_answers_total")
    assert after[(("result", "same_zone"),)] - before[(("result", "same_zone"),)] >= 3
    cross = after[(("result", "cross_zone"),)] - before[(("result", "cross_zone"),)]
    addresses(port, "db.service.consul", API_A)
    addresses(port, "db.service.consul", API_A, tcp=True)
    assert counters(base, "meshdns_locality_answers_total")[(("result", "cross_zone"),)] == \
        before[(("result", "cross_zone"),)] + cross + 2


def test_within_a_split_the_side_is_chosen_first_then_the_zone(srv):
    base, port = srv.http, srv.dns_port
    for iid, service, address, zone in (("old-a", "old", "10.8.1.1", "a"), ("old-b", "old", "10.8.2.1", "b"),
                                        ("new-b", "new", "10.7.2.1", "b")):
        register(base, {"Name": service, "ID": iid, "Address": address, "Port": 80, "Meta": {"zone": zone}})
    split = {"Kind": "service-splitter", "Name": "app",
             "Splits": [{"Weight": 50, "Service": "old"}, {"Weight": 50, "Service": "new"}]}
    assert api(base, "PUT", "/v1/config", split).status == 200
    seen = {tuple(addresses(port, "app.service.consul", API_A)[1]) for _ in range(60)}
    # old's zone-a instance, or new's (none in zone a, so all of new); never old's zone-b instance
    assert seen == {("10.8.1.1",), ("10.7.2.1",)}
    seen = {tuple(addresses(port, "app.service.consul", API_B)[1]) for _ in range(60)}
    assert seen == {("10.8.2.1",), ("10.7.2.1",)}


# -- intention views ------------------------------------------------------------------------

def exchange(port, wire, source, *, tcp=False):
    """Raw bytes in, raw bytes out, from a socket bound to `source`."""
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(source, 0)) as s:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = s.recv(65535)
                assert chunk
                data += chunk
            return data[2:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind((source, 0))
        s.sendto(wire, ("127.0.0.1", port))
        return s.recv(65535)


def ask(port, name, rdtype, source, *, qid=1, tcp=False, edns=0):
    q = dns.message.make_query(name, rdtype, use_edns=edns)
    q.id = qid
    q.flags = 0
    return exchange(port, q.to_wire(), source, tcp=tcp)


FORMS = [("db.service.consul", "zz.service.consul"), ("v1.db.service.consul", "v1.zz.service.consul"),
         ("_db._tcp.service.consul", "_zz._tcp.service.consul"), ("DB.service.consul", "zz.service.consul"),
         ("primary.query.consul", "primarz.query.consul")]


@pytest.mark.parametrize("rdtype", ["A", "AAAA", "SRV", "TXT", "ANY"])
def test_a_denied_name_is_answered_exactly_as_a_missing_one(srv, rdtype):
    port = srv.dns_port
    for name, missing in FORMS:
        for tcp, edns in ((False, 0), (False, -1), (True, 0)):
            denied = ask(port, name, rdtype, WEB_A, qid=7, tcp=tcp, edns=edns)
            absent = ask(port, missing, rdtype, WEB_A, qid=9, tcp=tcp, edns=edns)
            assert dns.message.from_wire(denied).rcode() == dns.rcode.NXDOMAIN, (name, rdtype)
            # the same bytes but for the ID and the question name (same length, as asked)
            asked, other = dns.name.from_text(name).to_wire(), dns.name.from_text(missing).to_wire()
            assert denied[2:] == absent[2:].replace(other, asked, 1), (name, rdtype, tcp, edns)
            # others get the addresses
            assert dns.message.from_wire(ask(port, name, rdtype, API_A, tcp=tcp, edns=edns)).rcode() == \
                dns.rcode.NOERROR


def test_intentions_decide_by_the_most_specific_source_and_follow_the_catalog(srv, caplog):
    port, base = srv.dns_port, srv.http
    caplog.set_level(logging.DEBUG, logger="meshdns.dns")
    nx = ("NXDOMAIN", [])
    before = counters(base, "meshdns_intention_denied_total").get((("destination", "db"), ("source", "web")), 0)
    assert addresses(port, "db.service.consul", WEB_A) == nx                # "web" deny beats "*" allow
    assert addresses(port, "db.service.consul", API_A) == ("NOERROR", [DB_A1, DB_A2])
    assert addresses(port, "db.service.consul", NOBODY)[0] == "NOERROR"    # no identity: the source "*"
    assert addresses(port, "primary.query.consul", WEB_A) == nx
    assert addresses(port, "api.service.consul", WEB_A)[0] == "NOERROR"    # no entry for api: the default
    # an entry that lets only api in: "*" deny, an exact allow
    entry = {"Kind": "service-intentions", "Name": "api",
             "Sources": [{"Name": "*", "Action": "deny"}, {"Name": "api", "Action": "allow"}]}
    assert api(base, "PUT", "/v1/config", entry).status == 200
    assert addresses(port, "api.service.consul", WEB_A) == nx
    assert addresses(port, "api.service.consul", NOBODY) == nx
    assert addresses(port, "api.service.consul", API_B)[0] == "NOERROR"
    # identities follow the catalog: a web instance at NOBODY's address makes it web
    register(base, {"Name": "web", "ID": "web-2", "Address": NOBODY, "Port": 80})
    assert addresses(port, "db.service.consul", NOBODY) == nx
    # the entry goes: db is answered again
    assert api(base, "DELETE", "/v1/config/service-intentions/db").status == 200
    assert addresses(port, "db.service.consul", WEB_A)[0] == "NOERROR"

    denied = counters(base, "meshdns_intention_denied_total")
    assert denied[(("destination", "db"), ("source", "web"))] - before == 3   # web twice, NOBODY as web once
    assert denied[(("destination", "api"), ("source", "*"))] == 1
    assert denied[(("destination", "api"), ("source", "web"))] == 1
    assert any("may not reach" in r.getMessage() and WEB_A in r.getMessage() for r in caplog.records)


def test_first_cached_and_tcp_answers_agree_for_each_class(srv):
    port = srv.dns_port
    expected = {WEB_A: ("NXDOMAIN", []), API_A: ("NOERROR", [DB_A1, DB_A2]), API_B: ("NOERROR", [DB_B1]),
                NOBODY: ("NOERROR", [DB_A1, DB_A2, DB_B1]), OFFICE_B: ("NOERROR", [DB_B1])}
    for source, want in expected.items():
        for tcp in (False, False, True, True):
            assert addresses(port, "db.service.consul", source, tcp=tcp) == want, (source, tcp)
    # the reply cache holds one class per (zone, identities that matter), not one per address
    handler = srv.app.handler
    assert handler.client_class(API_A).cls.services == frozenset({"*"})
    assert handler.client_class(WEB_A).cls.services == frozenset({"web"})
    assert handler.client_class(OFFICE_B).cls.zone == "b"


def test_with_both_off_answers_do_not_depend_on_who_asks(start_server, tmp_path):
    server = start_server({"locality": VIEWS["locality"]}, zones=tmp_path / "zones")
    estate(server.http)
    port = server.dns_port
    for source in (WEB_A, API_A, API_B, OFFICE_B):
        assert addresses(port, "db.service.consul", source) == ("NOERROR", [DB_A1, DB_A2, DB_B1])
        assert priorities(port, "db.service.consul", source) == {DB_A1: 1, DB_A2: 1, DB_B1: 1}
    assert server.app.handler.classifier.identify is None      # no catalog lookup per client
    assert not any(counters(server.http, "meshdns_locality_answers_total").values())


def test_worker_processes_agree(tmp_path):
    config = tmp_path / "meshdns.toml"
    config.write_text('[dns]\nprefer_same_zone = true\nenforce_intentions = true\nintentions_default = "deny"\n'
                      '[[locality]]\ncidr = "127.0.0.16/28"\nzone = "b"\n')
    (tmp_path / "zones").mkdir()
    proc = ServerProcess("--config", str(config), "--zones", str(tmp_path / "zones"),
                         "--data-dir", str(tmp_path / "d"), "--workers", "2").start()
    try:
        estate(proc.http)
        port = proc.dns_port
        nx = ("NXDOMAIN", [])
        # default deny: db's entry lets "*" in, so all but web; api has no entry, so nobody
        expected = {WEB_A: nx, API_A: ("NOERROR", [DB_A1, DB_A2]), API_B: ("NOERROR", [DB_B1]),
                    OFFICE_B: ("NOERROR", [DB_B1])}

        def agree():
            return all(addresses(port, "db.service.consul", s, tcp=tcp) == want
                       for s, want in expected.items() for tcp in (False, True) for _ in range(4))
        wait_until(agree, timeout=30, what="every process answers each class alike")
        for _ in range(10):   # fresh source ports: the kernel spreads them over the processes
            assert agree()
            assert addresses(port, "api.service.consul", API_A) == nx
        # workers' counters reach /metrics
        wait_until(lambda: counters(proc.http, "meshdns_intention_denied_total").get(
            (("destination", "db"), ("source", "web")), 0) >= 80 and
            counters(proc.http, "meshdns_intention_denied_total").get(
            (("destination", "api"), ("source", "*")), 0) >= 10, timeout=30, what="worker counters")
    finally:
        proc.stop()


def test_the_class_table_is_bounded():
    """More classes than the table holds: the oldest goes with its replies; every answer stays right."""
    from meshdns.catalog.client_class import parse_localities
    from meshdns.catalog.model import Instance, SourceState
    from meshdns.catalog.store import Store
    from meshdns.dns.clients import Classifier, RecursionPolicy, Views
    from meshdns.dns.handler import DnsHandler
    from meshdns.dns.resolver import ResolverOptions

    store = Store(datacenter="dc1")
    store.publish("t", SourceState(services={("dc1", "db"): tuple(
        Instance(f"db-{z}", "db", "dc1", f"10.9.{n}.1", 80, meta=(("zone", z),)) for n, z in enumerate("abc"))}))
    views = Views(localities=parse_localities((f"10.1.{n}.0/24", z) for n, z in enumerate("abc")), zones=True,
                  intentions=False)
    handler = DnsHandler(store, ResolverOptions(prefer_same_zone=True), max_classes=2,
                         classifier=Classifier(RecursionPolicy(()), identify=views))
    wire = dns.message.make_query("db.service.consul.", "A").to_wire()
    for _ in range(3):
        for n in range(3):
            reply = dns.message.from_wire(handler.handle(wire, (f"10.1.{n}.7", 53), tcp=False))
            assert rrset_values(reply) == [f"10.9.{n}.1"]
            assert handler.classes <= 2


def test_the_reply_cache_limits_are_config_keys_and_its_size_is_a_metric(start_server, tmp_path):
    """`[dns] max_client_classes = 1`: clients of two zones take turns in the one class kept, and each still
    gets its own zone's answer; `reply_cache_mb = 0` keeps no reply at all. /metrics shows both."""
    def gauges(base):
        return (counters(base, "meshdns_reply_cache_classes")[()], counters(base, "meshdns_reply_cache_bytes")[()])

    one = start_server({**VIEWS, "dns": {**VIEWS["dns"], "max_client_classes": 1}}, zones=tmp_path / "one")
    estate(one.http)
    for _ in range(3):
        assert addresses(one.dns_port, "db.service.consul", API_A) == ("NOERROR", [DB_A1, DB_A2])
        assert addresses(one.dns_port, "db.service.consul", API_B) == ("NOERROR", [DB_B1])
    classes, kept = gauges(one.http)
    assert classes == 1 and kept > 0

    none = start_server({**VIEWS, "dns": {**VIEWS["dns"], "reply_cache_mb": 0}}, zones=tmp_path / "none")
    estate(none.http)
    for _ in range(3):
        assert addresses(none.dns_port, "db.service.consul", API_B) == ("NOERROR", [DB_B1])
    assert gauges(none.http) == (1, 0)
