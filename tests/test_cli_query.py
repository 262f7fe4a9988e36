"""`meshdns query`: what dig prints, for a machine that has no dig."""
import re
import socket
import subprocess
import sys

import pytest

from harness import ROOT, dig

NAMES = [("legacy-billing.service.consul", "SRV"), ("legacy-billing.service.consul", "A"),
         ("billing-vm-1.node.consul", "TXT"), ("ledger.service.consul", "AAAA"), ("nope.service.consul", "A"),
         ("213.28.168.192.in-addr.arpa", "PTR"), ("intranet.corp.internal", "A"), ("consul", "SOA")]


def meshdns_query(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshdns", "query", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def sections(out: str) -> dict:
    """status, flags and each section's records (fields split on whitespace, sorted)."""
    found = {"status": re.search(r"status: (\w+)", out).group(1),
             "flags": sorted(re.search(r"flags: ([a-z ]*);", out).group(1).split())}
    current = None
    for line in out.splitlines():
        if m := re.match(r";; (\w+) SECTION:", line):
            current = found.setdefault(m.group(1), [])
        elif line.strip() and not line.startswith(";") and current is not None:
            current.append(line.split())
    return {k: sorted(v) if k not in ("status", "flags") else v for k, v in found.items()}


@pytest.mark.parametrize("name,qtype", NAMES, ids=[f"{n}/{t}" for n, t in NAMES])
def test_prints_what_dig_prints(server, name, qtype):
    ours = meshdns_query("--server", f"127.0.0.1:{server.dns_port}", name, qtype)
    assert ours.returncode == 0, ours.stderr
    theirs = dig(server.dns_port, name, qtype)
    assert sections(ours.stdout) == sections(theirs)
    assert f";; SERVER: 127.0.0.1#{server.dns_port}(127.0.0.1) (UDP)" in ours.stdout
    short = meshdns_query("--short", "--tcp", "--server", f"127.0.0.1:{server.dns_port}", name, qtype)
    assert sorted(short.stdout.splitlines()) == sorted(dig(server.dns_port, "+short", "+tcp", name, qtype).splitlines())


def test_a_truncated_reply_is_asked_again_over_tcp(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "big.toml").write_text("".join(f'[[service]]\nname = "big"\naddress = "10.7.0.{i}"\nport = 80\n\n'
                                            for i in range(1, 121)))
    srv = start_server(zones=zones)
    out = meshdns_query("--server", f"127.0.0.1:{srv.dns_port}", "big.service.consul")
    assert out.returncode == 0 and ";; Truncated, retrying in TCP mode." in out.stdout
    assert len(sections(out.stdout)["ANSWER"]) == 120 and "(TCP)" in out.stdout


def test_no_reply_exits_9_as_dig_does(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:   # bound, never answers
        silent.bind(("127.0.0.1", 0))
        out = meshdns_query("--timeout", "0.5", "--server", f"127.0.0.1:{silent.getsockname()[1]}", "x.consul")
    assert out.returncode == 9 and "no servers could be reached" in out.stderr
    assert meshdns_query("--server", "127.0.0.1:99999", "x.consul").returncode == 1
    assert "unknown record type 'BOGUS'" in meshdns_query("x.consul", "BOGUS").stderr
