"""Splits and weighted shuffles as clients see them: statistics over thousands of real queries."""
import socket
import struct

import dns.message
import pytest

from harness import query, rrset_values

CHI2_DF2_P001 = 13.816   # chi-square critical value, 2 degrees of freedom, p = 0.001


def zones_with(tmp_path, text):
    d = tmp_path / "zones"
    d.mkdir()
    (d / "estate.toml").write_text(text)
    return d


ESTATE = '''
[[service]]
name = "legacy-billing"
address = "10.1.0.1"
port = 8080
[[service]]
name = "legacy-billing"
address = "10.1.0.2"
port = 8080
[[service]]
name = "billing"
address = "10.2.0.1"
port = 80
tags = ["v2"]
[[service]]
name = "billing"
address = "10.2.0.2"
port = 80
tags = ["v1"]
[[service]]
name = "canary"
address = "10.5.0.1"
port = 80
[[service]]
name = "third"
address = "10.3.0.1"
port = 80
[[service]]
name = "weighted"
address = "10.4.0.1"
port = 80
weights = { passing = 3 }
[[service]]
name = "weighted"
address = "10.4.0.2"
port = 80
weights = { passing = 1 }

[[split]]
name = "billing"
targets = [ { service = "legacy-billing", weight = 90 }, { service = "billing", tag = "v2", weight = 10 } ]

[[split]]
name = "three"
targets = [ { service = "legacy-billing", weight = 50 }, { service = "canary", weight = 30 },
            { service = "third", weight = 20 } ]
'''


def first_answers(port, name, n, qtype=1):
    """The answer sets of n queries over one UDP socket (pipelined in windows of 100)."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        base = dns.message.make_query(name, qtype).to_wire()
        for start in range(0, n, 100):
            batch = min(100, n - start)
            for i in range(batch):
                s.sendto(struct.pack("!H", (start + i) & 0xFFFF) + base[2:], ("127.0.0.1", port))
            for _ in range(batch):
                msg = dns.message.from_wire(s.recv(4096))
                out.append([rd.to_text() for rrset in msg.answer for rd in rrset])
    return out


SIDE = {"10.1.0.1": "legacy", "10.1.0.2": "legacy", "10.2.0.1": "v2", "10.3.0.1": "third", "10.5.0.1": "canary"}


@pytest.mark.parametrize("seed", [1234, None], ids=["seeded", "default-rng"])
def test_90_10_split_within_1_5_points(start_server, tmp_path, seed):
    srv = start_server({"dns": {"rng_seed": seed}} if seed is not None else None,
                       zones=zones_with(tmp_path, ESTATE))
    answers = first_answers(srv.dns_port, "billing.service.consul", 10_000)
    sides = [{SIDE[a] for a in ans} for ans in answers]
    assert all(len(s) == 1 for s in sides)            # one side per answer, never mixed
    share_new = sum(s == {"v2"} for s in sides) / len(sides)
    assert abs(share_new - 0.10) <= 0.015
    assert all(sorted(a) == ["10.1.0.1", "10.1.0.2"] for a in answers if SIDE[a[0]] == "legacy")


def test_three_way_split_passes_chi_square(start_server, tmp_path):
    """Seeded, so it cannot fail one run in a thousand by chance (a bias would fail it every run)."""
    srv = start_server({"dns": {"rng_seed": 2026}}, zones=zones_with(tmp_path, ESTATE))
    answers = first_answers(srv.dns_port, "three.service.consul", 10_000)
    counts = {"legacy": 0, "canary": 0, "third": 0}
    for ans in answers:
        counts[SIDE[ans[0]]] += 1
    expected = {"legacy": 5000, "canary": 3000, "third": 2000}
    chi2 = sum((counts[k] - expected[k]) ** 2 / expected[k] for k in counts)
    assert chi2 < CHI2_DF2_P001, counts


def test_split_srv_weights_are_the_shares(start_server, tmp_path):
    srv = start_server(zones=zones_with(tmp_path, ESTATE))
    msg = query(srv.dns_port, "three.service.consul", "SRV")
    weights = {}
    for rd in msg.answer[0]:
        target = rd.target.to_text()
        weights[target] = rd.weight
    total = sum(weights.values())
    share = {side: 0.0 for side in ("legacy", "canary", "third")}
    hexside = {"0a010001": "legacy", "0a010002": "legacy", "0a050001": "canary", "0a030001": "third"}
    for target, w in weights.items():
        share[hexside[target.split(".")[0]]] += w / total
    assert share == pytest.approx({"legacy": 0.5, "canary": 0.3, "third": 0.2}, abs=0.001)
    assert len(weights) == 4 and max(weights.values()) == 65535


def test_weighted_shuffle_3_to_1_puts_heavier_first_75_percent(start_server, tmp_path):
    srv = start_server({"dns": {"rng_seed": 75}}, zones=zones_with(tmp_path, ESTATE))
    answers = first_answers(srv.dns_port, "weighted.service.consul", 10_000)
    assert all(sorted(a) == ["10.4.0.1", "10.4.0.2"] for a in answers)
    share = sum(a[0] == "10.4.0.1" for a in answers) / len(answers)
    assert abs(share - 0.75) <= 0.02


def test_seeded_answers_repeat_exactly(start_server, tmp_path):
    zones = zones_with(tmp_path, ESTATE)
    runs = []
    for _ in range(2):
        srv = start_server({"dns": {"rng_seed": 99}}, zones=zones)
        runs.append(first_answers(srv.dns_port, "three.service.consul", 300))
    assert runs[0] == runs[1]


def test_all_sides_down_nxdomain_or_fail_open(start_server, tmp_path):
    down = ESTATE.replace('[[split]]\nname = "billing"', '[[split]]\nname = "ghosts"\ntargets = [ { service = '
                          '"nobody", weight = 1 } ]\n\n[[split]]\nname = "billing"')
    srv = start_server(zones=zones_with(tmp_path, down))
    assert query(srv.dns_port, "ghosts.service.consul").rcode() == 3
