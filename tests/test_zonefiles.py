"""RFC 1035 master files as operators write them for BIND: $INCLUDE, parentheses, escapes, and errors that
name file:line. Served by the real server, read back with dnspython."""
import os

import pytest

from harness import api, query, rrset_values, wait_until


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))   # the mtime moves on coarse filesystems


HEAD = """$ORIGIN corp.test.
$TTL 300
@   IN SOA ns1 hostmaster (
        2026010101 ; serial
        3600       ; refresh
        600 86400  ; retry, expire
        60 )       ; minimum
    IN NS ns1
ns1 IN A 10.0.0.1
"""


@pytest.fixture
def zones(tmp_path):
    d = tmp_path / "zones"
    d.mkdir()
    return d


def zone_errors(srv) -> dict:
    return api(srv.http, "GET", "/readyz").json()["sources"]["zones"]["errors"]


def test_include_relative_to_the_including_file_nested_and_with_an_origin(start_server, zones, monkeypatch,
                                                                          tmp_path):
    write(zones / "corp.test.zone", HEAD + "$INCLUDE hosts/web.inc\n$INCLUDE hosts/lab.inc lab.corp.test.\n"
                                           "after IN A 10.0.0.9\n")
    write(zones / "hosts" / "web.inc", "www 60 IN A 10.0.0.2\n")
    write(zones / "hosts" / "lab.inc", "db IN A 10.0.1.1\n$INCLUDE deeper.inc\n")   # relative to hosts/
    write(zones / "hosts" / "deeper.inc", "cache IN A 10.0.1.2\n")
    monkeypatch.chdir(tmp_path)          # not the zones directory: $INCLUDE must not depend on the cwd
    srv = start_server(zones=zones)
    www = query(srv.dns_port, "www.corp.test")
    assert rrset_values(www) == ["10.0.0.2"] and www.answer[0].ttl == 60
    assert rrset_values(query(srv.dns_port, "db.lab.corp.test")) == ["10.0.1.1"]        # the include's origin
    assert rrset_values(query(srv.dns_port, "cache.lab.corp.test")) == ["10.0.1.2"]     # nested, same origin
    assert rrset_values(query(srv.dns_port, "after.corp.test")) == ["10.0.0.9"]         # origin restored
    # a change to an included file reloads the zone that includes it
    write(zones / "hosts" / "web.inc", "www 60 IN A 10.0.0.3\n")
    wait_until(lambda: rrset_values(query(srv.dns_port, "www.corp.test")) == ["10.0.0.3"])


def test_parentheses_and_escapes(start_server, zones):
    write(zones / "corp.test.zone", HEAD + (
        '_ldap._tcp IN SRV ( 0 5   ; priority, weight\n'
        '                    389    ; port\n'
        '                    ldap.corp.test. )\n'
        'spf IN TXT "v=spf1 mx -all; not a comment" "say \\"hi\\"" "\\065\\066C"\n'
        'multi IN TXT ( "one"\n'
        '               "two" )\n'))
    srv = start_server(zones=zones)
    assert rrset_values(query(srv.dns_port, "_ldap._tcp.corp.test", "SRV")) == ["0 5 389 ldap.corp.test."]
    spf = query(srv.dns_port, "spf.corp.test", "TXT")
    assert [s for rd in spf.answer[0] for s in rd.strings] == [b"v=spf1 mx -all; not a comment", b'say "hi"',
                                                               b"ABC"]
    multi = query(srv.dns_port, "multi.corp.test", "TXT")
    assert [s for rd in multi.answer[0] for s in rd.strings] == [b"one", b"two"]
    soa = query(srv.dns_port, "corp.test", "SOA").answer[0][0]
    assert (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum) == (2026010101, 3600, 600, 86400, 60)


@pytest.mark.parametrize("body, line, message", [
    ("www IN A 10.0.0.2\nbad IN A not-an-ip\n", 11, "cannot parse 'bad IN A not-an-ip'"),
    ("www IN A 10.0.0.2\nwww.other.test. IN A 10.0.0.3\n", 11, "www.other.test. is outside the zone corp.test."),
    ("x IN BOGUS 1\n", 10, "unknown rdatatype 'BOGUS'"),
    ("wiki IN CNAME www\nwiki IN A 10.0.0.4\n", 11, "not compatible with a CNAME"),
    ("$INCLUDE missing.inc\n", 10, "cannot read"),
    ("$INCLUDE corp.test.zone\n", 10, "$INCLUDEs (does a file include itself?)"),
    ("oops IN TXT ( \"never closed\"\nnext IN A 10.0.0.5\n", 11, "unbalanced parentheses"),
])
def test_a_bad_line_is_reported_as_file_and_line(start_server, zones, body, line, message):
    path = zones / "corp.test.zone"
    write(path, HEAD + body)
    srv = start_server(zones=zones)
    error = zone_errors(srv)[str(path)]
    assert error.startswith(f"{path}:{line}: ") and message in error, error
    assert api(srv.http, "GET", "/readyz").status == 503    # nothing of it is served


def test_a_bad_line_in_an_included_file_names_that_file_and_the_old_zone_stays(start_server, zones):
    path = zones / "corp.test.zone"
    write(path, HEAD + "$INCLUDE hosts.inc\n")
    write(zones / "hosts.inc", "www IN A 10.0.0.2\n")
    srv = start_server(zones=zones)
    assert rrset_values(query(srv.dns_port, "www.corp.test")) == ["10.0.0.2"]
    write(zones / "hosts.inc", "www IN A 10.0.0.3\n\nbad IN AAAA 10.0.0.4\n")
    wait_until(lambda: str(path) in zone_errors(srv))
    assert zone_errors(srv)[str(path)] == f"{zones / 'hosts.inc'}:3: cannot parse 'bad IN AAAA 10.0.0.4'"
    assert rrset_values(query(srv.dns_port, "www.corp.test")) == ["10.0.0.2"]   # the previous content stays
