"""Prepared queries in one site: Consul's /v1/query API, `<name>.query.consul`, templates, ACL, bad input,
durability. Failover between sites is in test_failover.py."""
import dns.rcode
import pytest

from harness import ServerProcess, api, query, rrset_values, wait_until
from test_workers import ask_from_many_ports, owners_of_port

ZONES = '''
[[service]]
name = "billing"
id = "billing-a"
address = "10.1.0.1"
port = 8080
tags = ["v1"]

[[service]]
name = "billing"
id = "billing-b"
address = "10.1.0.2"
port = 8081
tags = ["v2", "canary"]

[[service]]
name = "billing"
id = "billing-c"
address = "fd00::3"
port = 8082
tags = ["v2"]
meta = { zone = "b" }

[[service]]
name = "redis"
address = "10.1.0.9"
port = 6379
tags = ["v2"]
'''

BILLING = "b1ll1ng-s3cr3t"
MGMT = "m4n4g3m3nt-s3cr3t"
TOKENS = {"acl": {"tokens": [{"secret": BILLING, "write": ["billing"]}, {"secret": MGMT, "management": True}]}}


def zones(tmp_path, text=ZONES):
    d = tmp_path / "zones"
    d.mkdir(exist_ok=True)
    (d / "estate.toml").write_text(text)
    return d


@pytest.fixture
def srv(start_server, tmp_path):
    return start_server({"dns": {"service_ttl": {"*": "3s"}}}, zones=zones(tmp_path))


def create(srv, body, **kw) -> str:
    r = api(srv.http, "POST", "/v1/query", body, **kw)
    assert r.status == 200, r
    return r.json()["ID"]


def answers(srv, name, rdtype="A"):
    return sorted(rrset_values(query(srv.dns_port, name, rdtype)))


def test_create_list_get_update_delete(srv):
    qid = create(srv, {"Name": "billing-v2", "Service": {"Service": "billing", "Tags": ["v2"]}, "DNS": {"TTL": "7s"}})
    listed = api(srv.http, "GET", "/v1/query").json()
    assert [q["ID"] for q in listed] == [qid]
    one = api(srv.http, "GET", f"/v1/query/{qid}").json()
    assert isinstance(one, list) and len(one) == 1  # a list of one, as Consul answers
    q = one[0]
    assert (q["Name"], q["Service"]["Service"], q["Service"]["Tags"], q["DNS"]["TTL"]) == \
        ("billing-v2", "billing", ["v2"], "7s")
    assert q["Template"]["Type"] == "" and q["Service"]["Failover"] == {"NearestN": 0, "Datacenters": []}
    assert q["CreateIndex"] == q["ModifyIndex"] > 0

    r = api(srv.http, "PUT", f"/v1/query/{qid}", {"Name": "billing-v2", "Service": {"Service": "redis"}})
    assert r.status == 200
    q2 = api(srv.http, "GET", f"/v1/query/{qid}").json()[0]
    assert q2["Service"]["Service"] == "redis" and q2["CreateIndex"] == q["CreateIndex"] < q2["ModifyIndex"]
    assert answers(srv, "billing-v2.query.consul") == ["10.1.0.9"]

    assert api(srv.http, "DELETE", f"/v1/query/{qid}").status == 200
    assert api(srv.http, "GET", "/v1/query").json() == []
    assert query(srv.dns_port, "billing-v2.query.consul").rcode() == dns.rcode.NXDOMAIN
    for method, path in (("GET", f"/v1/query/{qid}"), ("DELETE", f"/v1/query/{qid}"),
                         ("GET", f"/v1/query/{qid}/execute"), ("GET", "/v1/query/nothing/explain")):
        r = api(srv.http, method, path)
        assert r.status == 404 and "not found" in r.text, (method, path, r)
    r = api(srv.http, "PUT", f"/v1/query/{qid}", {"Service": {"Service": "redis"}})
    assert r.status == 404


def test_query_names_answer_a_aaaa_srv_with_tags_and_ttl(srv):
    qid = create(srv, {"Name": "billing-v2", "Service": {"Service": "billing", "Tags": ["v2", "!canary"]},
                       "DNS": {"TTL": "7s"}})
    create(srv, {"Name": "all-billing", "Service": {"Service": "billing"}})
    msg = query(srv.dns_port, "billing-v2.query.consul", "AAAA")
    assert rrset_values(msg) == ["fd00::3"] and msg.answer[0].ttl == 7
    assert query(srv.dns_port, "billing-v2.query.consul", "A").answer == []  # NODATA: the only v2 is IPv6
    assert answers(srv, "all-billing.query.consul") == ["10.1.0.1", "10.1.0.2"]
    assert query(srv.dns_port, "all-billing.query.consul").answer[0].ttl == 3  # service_ttl without DNS.TTL
    assert answers(srv, "all-billing.query.consul", "SRV") == [
        "1 1 8080 0a010001.addr.dc1.consul.", "1 1 8081 0a010002.addr.dc1.consul.",
        "1 1 8082 fd000000000000000000000000000003.addr.dc1.consul."]
    assert answers(srv, f"{qid}.query.consul", "AAAA") == ["fd00::3"]  # by ID too
    assert answers(srv, "BILLING-V2.query.dc1.consul", "AAAA") == ["fd00::3"]
    assert query(srv.dns_port, "billing-v2.query.dc7.consul").rcode() == dns.rcode.NXDOMAIN
    assert query(srv.dns_port, "nothing.query.consul").rcode() == dns.rcode.NXDOMAIN

    out = api(srv.http, "GET", "/v1/query/all-billing/execute").json()
    assert (out["Service"], out["Datacenter"], out["Failovers"], out["DNS"]) == ("billing", "dc1", 0, {"TTL": ""})
    assert sorted(n["Service"]["ID"] for n in out["Nodes"]) == ["billing-a", "billing-b", "billing-c"]
    assert {n["Checks"][0]["Status"] for n in out["Nodes"]} == {"passing"}
    assert len(api(srv.http, "GET", "/v1/query/all-billing/execute?limit=2").json()["Nodes"]) == 2
    assert api(srv.http, "GET", f"/v1/query/{qid}/execute").json()["DNS"] == {"TTL": "7s"}


def test_only_passing_and_meta_filters(start_server, tmp_path):
    srv = start_server(zones=zones(tmp_path, ""))
    for sid, ip, status, meta in (("a", "10.1.0.1", "passing", {"zone": "a"}), ("b", "10.1.0.2", "warning", {}),
                                  ("c", "10.1.0.3", "critical", {"zone": "a"})):
        r = api(srv.http, "PUT", "/v1/agent/service/register",
                {"ID": sid, "Name": "db", "Address": ip, "Port": 5432, "Meta": meta,
                 "Check": {"TTL": "10m", "Status": status}})
        assert r.status == 200
    create(srv, {"Name": "db-any", "Service": {"Service": "db"}})
    create(srv, {"Name": "db-passing", "Service": {"Service": "db", "OnlyPassing": True}})
    create(srv, {"Name": "db-zone-a", "Service": {"Service": "db", "ServiceMeta": {"zone": "a"}}})
    assert answers(srv, "db-any.query.consul") == ["10.1.0.1", "10.1.0.2"]   # warning answers, critical never
    assert answers(srv, "db-passing.query.consul") == ["10.1.0.1"]
    assert answers(srv, "db-zone-a.query.consul") == ["10.1.0.1"]


def test_templates_interpolate_the_name(srv):
    create(srv, {"Name": "", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${name.full}"}})
    create(srv, {"Name": "geo-", "Template": {"Type": "name_prefix_match"},
                 "Service": {"Service": "${name.suffix}", "Tags": ["v2"]}})
    rid = create(srv, {"Name": "geo-db-", "Template": {"Type": "name_prefix_match",
                                                       "Regexp": "^geo-db-([a-z]+)(?:-(v[0-9]+))?$",
                                                       "RemoveEmptyTags": True},
                       "Service": {"Service": "${match(1)}", "Tags": ["${match(2)}"]}})
    create(srv, {"Name": "geo-redis", "Service": {"Service": "billing", "Tags": ["v1"]}})  # a static name wins

    assert answers(srv, "redis.query.consul") == ["10.1.0.9"]                  # the catch-all: ${name.full}
    assert answers(srv, "geo-billing.query.consul") == ["10.1.0.2"]            # ${name.suffix}, tag v2
    assert answers(srv, "geo-db-billing-v1.query.consul") == ["10.1.0.1"]      # the longest prefix, ${match(N)}
    assert answers(srv, "geo-db-billing.query.consul") == ["10.1.0.1", "10.1.0.2"]  # no group 2: no tag
    assert answers(srv, "geo-redis.query.consul") == ["10.1.0.1"]
    explained = api(srv.http, "GET", "/v1/query/geo-db-billing-v1/explain").json()["Query"]
    assert (explained["ID"], explained["Service"]["Service"], explained["Service"]["Tags"]) == \
        (rid, "billing", ["v1"])
    assert api(srv.http, "GET", f"/v1/query/{rid}").json()[0]["Service"]["Service"] == "${match(1)}"
    out = api(srv.http, "GET", "/v1/query/geo-db-billing-v2/execute").json()
    assert out["Service"] == "billing" and sorted(n["Service"]["ID"] for n in out["Nodes"]) == \
        ["billing-b", "billing-c"]


@pytest.mark.parametrize("body,field", [
    ({"Name": "q", "Service": {"Service": "billing"}, "Servce": {}}, "Servce: unknown field"),
    ({"Name": "q", "Service": {"Service": "billing", "OnlyPasing": True}}, "Service.OnlyPasing: unknown field"),
    ({"Name": "q", "Service": {"Service": "billing", "Failover": {"NearestM": 1}}},
     "Service.Failover.NearestM: unknown field"),
    ({"Name": "q", "Service": {"Tags": ["v2"]}}, "Service.Service: required"),
    ({"Name": "q"}, "Service.Service: required"),
    ({"Name": "q", "Template": {"Type": "name_prefix_match", "Regexp": "^geo-(.*"},
      "Service": {"Service": "${match(1)}"}}, "Template.Regexp: invalid regular expression"),
    ({"Name": "q", "Template": {"Type": "name_suffix_match"}, "Service": {"Service": "billing"}},
     "Template.Type: 'name_suffix_match' is not 'name_prefix_match'"),
    ({"Name": "q", "Template": {"Regexp": "x"}, "Service": {"Service": "billing"}}, "Template.Regexp: only a template"),
    ({"Name": "q", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${name.ful}"}},
     "Service.Service: unknown variable '${name.ful}'"),
    ({"Name": "q", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${match(1)}"}},
     "Service.Service: ${match(1)} needs Template.Regexp"),
    ({"Name": "q", "Template": {"Type": "name_prefix_match", "Regexp": "^q-(.*)$"},
      "Service": {"Service": "${match(1)}", "Tags": ["${match(2)}"]}},
     "Service.Tags[0]: ${match(2)} needs Template.Regexp with at least 2 group(s)"),
    ({"Name": "q", "Service": {"Service": "bill.ing"}}, "Service.Service: 'bill.ing' is not a valid service name"),
    ({"Name": "q", "Service": {"Service": "billing", "Failover": {"NearestN": -1}}}, "Service.Failover.NearestN"),
    ({"Name": "q", "Service": {"Service": "billing", "Failover": {"Datacenters": "dc2"}}},
     "Service.Failover.Datacenters: expected a list of strings"),
    ({"Name": "q", "Service": {"Service": "billing", "OnlyPassing": "yes"}}, "Service.OnlyPassing"),
    ({"Name": "q", "Service": {"Service": "billing"}, "DNS": {"TTL": "soon"}}, "DNS.TTL: cannot parse duration"),
    ({"Name": "q", "Service": {"Service": "billing", "Near": "_agent"}}, "Service.Near: is not supported"),
    ({"Name": "q", "Session": "adf4238a", "Service": {"Service": "billing"}}, "Session: is not supported"),
    ({"Name": "q q", "Service": {"Service": "billing"}}, "Name: 'q q' is not a query name"),
    (["not", "an", "object"], "body: expected a JSON object"),
])
def test_bad_bodies_are_400_naming_the_field_and_change_nothing(srv, body, field):
    r = api(srv.http, "POST", "/v1/query", body)
    assert r.status == 400 and r.text.startswith(f"Invalid request: {field}"), r.text
    assert api(srv.http, "GET", "/v1/query").json() == []
    assert srv.app.db.load("query") == {}


def test_names_are_unique_and_an_update_keeps_its_id(srv):
    qid = create(srv, {"Name": "billing", "Service": {"Service": "billing"}})
    r = api(srv.http, "POST", "/v1/query", {"Name": "BILLING", "Service": {"Service": "redis"}})
    assert r.status == 400 and r.text.startswith(f"Invalid request: Name: 'billing' is already the name of "
                                                 f"prepared query {qid}")
    r = api(srv.http, "PUT", f"/v1/query/{qid}", {"ID": "0000", "Service": {"Service": "redis"}})
    assert r.status == 400 and "ID: '0000' does not match" in r.text
    assert api(srv.http, "PUT", f"/v1/query/{qid}", {"ID": qid, "Name": "billing",
                                                   "Service": {"Service": "redis"}}).status == 200
    assert answers(srv, "billing.query.consul") == ["10.1.0.9"]


def test_acl_needs_write_on_the_service_the_query_names(start_server, tmp_path):
    srv = start_server(TOKENS, zones=zones(tmp_path))
    billing = {"Name": "b", "Service": {"Service": "billing"}}
    assert api(srv.http, "POST", "/v1/query", billing).status == 403
    r = api(srv.http, "POST", "/v1/query", {"Name": "r", "Service": {"Service": "redis"}}, token=BILLING)
    assert r.status == 403 and "redis" in r.text and BILLING not in r.text
    qid = create(srv, billing, token=BILLING)
    everything = {"Name": "", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${name.full}"}}
    assert api(srv.http, "POST", "/v1/query", everything, token=BILLING).status == 403  # could be any service
    create(srv, {"Name": "bt-", "Template": {"Type": "name_prefix_match"},
                 "Service": {"Service": "billing-${name.suffix}"}}, token=BILLING)
    create(srv, everything, token=MGMT)
    # moving a query to a service the token may not write, or deleting without a token
    r = api(srv.http, "PUT", f"/v1/query/{qid}", {"Name": "b", "Service": {"Service": "redis"}}, token=BILLING)
    assert r.status == 403
    assert api(srv.http, "DELETE", f"/v1/query/{qid}").status == 403
    assert api(srv.http, "GET", f"/v1/query/{qid}").json()[0]["Service"]["Service"] == "billing"
    assert api(srv.http, "DELETE", f"/v1/query/{qid}", token=BILLING).status == 200
    assert len(api(srv.http, "GET", "/v1/query").json()) == 2  # reading needs no token (anonymous_read)


def test_queries_survive_kill_9(tmp_path):
    args = ("--zones", str(zones(tmp_path)), "--data-dir", str(tmp_path / "data"))
    proc = ServerProcess(*args).start()
    try:
        qid = create(proc, {"Name": "billing-v1", "Service": {"Service": "billing", "Tags": ["v1"]}})
        proc.kill()
        proc = ServerProcess(*args).start()
        assert api(proc.http, "GET", f"/v1/query/{qid}").json()[0]["Name"] == "billing-v1"
        assert sorted(rrset_values(query(proc.dns_port, "billing-v1.query.consul"))) == ["10.1.0.1"]
    finally:
        proc.stop()


def test_dns_worker_processes_answer_query_names_too(tmp_path):
    proc = ServerProcess("--zones", str(zones(tmp_path)), "--data-dir", str(tmp_path / "data"), "--workers", "2")
    proc.start()
    try:
        wait_until(lambda: len(owners_of_port(proc.dns_port)) == 2, 20, what="the primary and a worker")
        create(proc, {"Name": "billing-v1", "Service": {"Service": "billing", "Tags": ["v1"]}})
        wait_until(lambda: set(ask_from_many_ports(proc.dns_port, "billing-v1.query.consul", 60)) ==
                   {("10.1.0.1",)}, 30, what="every process answers the new query")
    finally:
        proc.stop()
