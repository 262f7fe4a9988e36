"""A split whose targets are in two sites: the strangler fig across datacenters.

`billing` in dc1 sends 70% of its answers to the local `legacy-billing` and 30% to dc2's
`billing` (its own name in another datacenter, which is no loop). Counted over thousands
of real queries with a seeded rng.
"""
from harness import api, metric_samples, wait_until
from sites import addresses, peer, readyz, sites  # noqa: F401  (sites is a fixture)
from test_splits_dns import first_answers

BOUND = 30

DC1 = '''
[[service]]
name = "legacy-billing"
address = "10.1.0.1"
port = 8080

[[service]]
name = "web-legacy"
address = "10.1.0.7"
port = 80

[[split]]
name = "billing"
targets = [ { service = "legacy-billing", weight = 70 },
            { service = "billing", datacenter = "dc2", weight = 30 } ]
'''

DC2 = '''
[[service]]
name = "billing"
address = "10.2.0.1"
port = 9090

[[service]]
name = "billing"
address = "10.2.0.2"
port = 9090

[[service]]
name = "web"
address = "10.2.0.7"
port = 80
'''


def test_a_split_across_two_sites_serves_both_in_proportion(sites):
    dc2 = sites.start("dc2", zones=DC2)
    dc1 = sites.start("dc1", zones=DC1, extra="[dns]\nrng_seed = 7", peers=[peer("dc2", dc2)])
    wait_until(lambda: readyz(dc1)["sources"]["peer/dc2"]["synced"], BOUND)

    answers = first_answers(dc1.dns_port, "billing.service.consul", 4000)
    sides = [frozenset(a) for a in answers]
    assert set(sides) == {frozenset({"10.1.0.1"}), frozenset({"10.2.0.1", "10.2.0.2"})}  # one site per answer
    share_dc2 = sum("10.2.0.1" in s for s in sides) / len(sides)
    assert abs(share_dc2 - 0.30) <= 0.03, share_dc2

    srv = addresses(dc1.dns_port, "billing.service.consul", "SRV")
    weights = {r.split()[3]: int(r.split()[1]) for r in srv}
    assert set(weights) == {"0a010001.addr.dc1.consul.", "0a020001.addr.dc2.consul.", "0a020002.addr.dc2.consul."}
    total = sum(weights.values())
    assert abs(weights["0a010001.addr.dc1.consul."] / total - 0.70) < 0.001

    entry = api(dc1.http, "GET", "/v1/config/service-splitter/billing").json()
    assert entry["Splits"] == [{"Weight": 70.0, "Service": "legacy-billing"},
                               {"Weight": 30.0, "Service": "billing", "Datacenter": "dc2"}]
    assert [(s["Service"], s.get("Datacenter"), s["Share"]) for s in entry["EffectiveShares"]] == \
        [("legacy-billing", None, 0.7), ("billing", "dc2", 0.3)]
    samples = metric_samples(dc1.http)
    counted = {dict(labels)["target"]: n for (name, labels), n in samples.items()
               if name == "meshdns_split_answers_total" and dict(labels)["split"] == "billing"}
    assert counted["billing@dc2"] == sum("10.2.0.1" in s for s in sides)

    # the same through the API, as Consul's service-splitter with a Datacenter
    assert api(dc1.http, "PUT", "/v1/config", {"Kind": "service-splitter", "Name": "web", "Splits": [
        {"Weight": 50, "Service": "web-legacy"}, {"Weight": 50, "Service": "web", "Datacenter": "dc2"}]}).status == 200
    assert {frozenset(a) for a in first_answers(dc1.dns_port, "web.service.consul", 200)} == \
        {frozenset({"10.1.0.7"}), frozenset({"10.2.0.7"})}


def test_splitter_datacenter_bad_input(sites):
    dc2 = sites.start("dc2", zones=DC2)
    dc1 = sites.start("dc1", zones=DC1, peers=[peer("dc2", dc2)])
    wait_until(lambda: readyz(dc1)["sources"]["peer/dc2"]["synced"], BOUND)

    def put(splits):
        return api(dc1.http, "PUT", "/v1/config", {"Kind": "service-splitter", "Name": "web", "Splits": splits})

    r = put([{"Weight": 50, "Service": "web-legacy"}, {"Weight": 50, "Service": "web", "Datacenter": "dc9"}])
    assert r.status == 400 and r.text.startswith("Invalid request: Splits[1].Datacenter: unknown datacenter 'dc9'")
    r = put([{"Weight": 50, "Service": "web-legacy"}, {"Weight": 50, "Service": "nothing", "Datacenter": "dc2"}])
    assert r.status == 400 and "Splits[1].Service: unknown target service 'nothing' in datacenter 'dc2'" in r.text
    r = put([{"Weight": 50, "Service": "web-legacy"}, {"Weight": 50, "Service": "web", "Datacenter": "dc1"}])
    assert r.status == 400 and "Splits[1].Service: a split may not target itself" in r.text  # dc1 is ours
    r = put([{"Weight": 50, "Service": "web-legacy"}, {"Weight": 50, "Service": "web", "Datacenter": "d c"}])
    assert r.status == 400 and "Splits[1].Datacenter" in r.text
    assert api(dc1.http, "GET", "/v1/config/service-splitter/web").status == 404  # nothing half-written
