"""Failover by name between sites: `<name>.query.consul` answers from the local datacenter's healthy
instances, else from the first failover datacenter that has some. Every site is a real process."""
from harness import api, wait_until
from sites import addresses, peer, readyz, register, sites  # noqa: F401  (sites is a fixture)

BOUND = 30


def db_zone(ip: str) -> str:
    return f'[[service]]\nname = "db"\nid = "db-zone"\naddress = "{ip}"\nport = 5432\n'


def execute(srv, name: str) -> dict:
    r = api(srv.http, "GET", f"/v1/query/{name}/execute")
    assert r.status == 200, r
    return r.json()


def where(srv, name: str) -> tuple:
    out = execute(srv, name)
    return out["Datacenter"], out["Failovers"], sorted(n["Service"]["Address"] for n in out["Nodes"])


def test_local_fails_then_dc2_answers_then_local_again(sites):
    dc2 = sites.start("dc2", zones=db_zone("10.2.0.5"))
    dc1 = sites.start("dc1", peers=[peer("dc2", dc2)])
    register(dc1, {"Name": "db", "ID": "db-1", "Address": "10.1.0.5", "Port": 5432,
                   "Check": {"CheckID": "db-ttl", "TTL": "10m", "Status": "passing"}})
    r = api(dc1.http, "POST", "/v1/query", {"Name": "db", "Service": {"Service": "db",
                                                                      "Failover": {"Datacenters": ["dc2"]}}})
    assert r.status == 200
    wait_until(lambda: readyz(dc1)["sources"]["peer/dc2"]["synced"], BOUND)
    assert addresses(dc1.dns_port, "db.query.consul") == ["10.1.0.5"]
    assert where(dc1, "db") == ("dc1", 0, ["10.1.0.5"])

    assert api(dc1.http, "PUT", "/v1/agent/check/fail/db-ttl").status == 200
    wait_until(lambda: addresses(dc1.dns_port, "db.query.consul") == ["10.2.0.5"], BOUND, what="answered by dc2")
    assert addresses(dc1.dns_port, "db.query.consul", "SRV") == ["1 1 5432 0a020005.addr.dc2.consul."]
    assert addresses(dc1.dns_port, "0a020005.addr.dc2.consul") == ["10.2.0.5"]
    assert where(dc1, "db") == ("dc2", 1, ["10.2.0.5"])
    assert [n["Node"]["Datacenter"] for n in execute(dc1, "db")["Nodes"]] == ["dc2"]

    # while failed over, a change in dc2 reaches dc1's answer after one blocking round trip
    register(dc2, {"Name": "db", "ID": "db-2", "Address": "10.2.0.6", "Port": 5432})
    wait_until(lambda: addresses(dc1.dns_port, "db.query.consul") == ["10.2.0.5", "10.2.0.6"], BOUND)

    assert api(dc1.http, "PUT", "/v1/agent/check/pass/db-ttl").status == 200
    wait_until(lambda: addresses(dc1.dns_port, "db.query.consul") == ["10.1.0.5"], BOUND, what="back to dc1")
    assert where(dc1, "db") == ("dc1", 0, ["10.1.0.5"])


def test_nearest_n_is_the_order_of_the_peer_tables_in_three_sites(sites):
    dc2 = sites.start("dc2", zones=db_zone("10.2.0.5"))
    dc3 = sites.start("dc3")
    register(dc3, {"Name": "db", "ID": "db-3", "Address": "10.3.0.5", "Port": 5432,
                   "Check": {"CheckID": "db3-ttl", "TTL": "10m", "Status": "passing"}})
    dc1 = sites.start("dc1", peers=[peer("dc3", dc3), peer("dc2", dc2)])  # dc3 is the nearest
    for name, failover in (("db-near1", {"NearestN": 1}), ("db-near2", {"NearestN": 2}),
                           ("db-dc2", {"Datacenters": ["dc2", "dc3"]}), ("db-local", {})):
        assert api(dc1.http, "POST", "/v1/query", {"Name": name, "Service": {"Service": "db",
                                                                             "Failover": failover}}).status == 200
    wait_until(lambda: all(s["synced"] for n, s in readyz(dc1)["sources"].items() if n.startswith("peer/")), BOUND)

    assert where(dc1, "db-near1") == ("dc3", 1, ["10.3.0.5"])
    assert where(dc1, "db-dc2") == ("dc2", 1, ["10.2.0.5"])
    assert where(dc1, "db-local") == ("dc1", 0, [])
    assert addresses(dc1.dns_port, "db-near2.query.consul") == ["10.3.0.5"]

    assert api(dc3.http, "PUT", "/v1/agent/check/fail/db3-ttl").status == 200
    wait_until(lambda: addresses(dc1.dns_port, "db-near2.query.consul") == ["10.2.0.5"], BOUND)
    assert where(dc1, "db-near2") == ("dc2", 2, ["10.2.0.5"])
    assert where(dc1, "db-near1") == ("dc3", 1, [])  # no healthy instance anywhere it may look
    assert addresses(dc1.dns_port, "db-near1.query.consul") == []  # NXDOMAIN
