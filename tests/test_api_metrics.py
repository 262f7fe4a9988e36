"""GET /metrics: DNS answers by qtype and rcode, split answers, registrations and check states."""
from harness import api, metric_samples, query


def test_metrics(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "split.toml").write_text(
        '[[service]]\nname = "legacy-billing"\naddress = "192.168.28.213"\nport = 80\n'
        '[[split]]\nname = "billing"\ntargets = [ { service = "legacy-billing", weight = 100 } ]\n')
    srv = start_server(zones=zones)
    for _ in range(3):
        query(srv.dns_port, "billing.service.consul")
    query(srv.dns_port, "nothing-here.service.consul")
    query(srv.dns_port, "legacy-billing.service.consul", "SRV")
    api(srv.http, "PUT", "/v1/agent/service/register",
        {"ID": "web-1", "Name": "web", "Address": "127.0.0.1", "Check": {"TTL": "1h"}})
    api(srv.http, "PUT", "/v1/agent/service/register",
        {"ID": "web-2", "Name": "web", "Address": "127.0.0.2", "Check": {"TTL": "1h", "Status": "passing"}})
    m = metric_samples(srv.http)
    q = "meshdns_dns_queries_total"
    assert m[(q, (("kind", "split"), ("qtype", "A"), ("rcode", "NOERROR")))] == 3
    assert m[(q, (("kind", "service"), ("qtype", "A"), ("rcode", "NXDOMAIN")))] == 1
    assert m[(q, (("kind", "service"), ("qtype", "SRV"), ("rcode", "NOERROR")))] == 1
    # every answer is in the latency histogram, and the catalog is sized by source
    assert m[("meshdns_dns_response_seconds_count", ())] == 5
    assert m[("meshdns_dns_response_seconds_bucket", (("le", "+Inf"),))] == 5
    assert m[("meshdns_catalog_source_instances", (("source", "zones"),))] == 1
    assert m[("meshdns_catalog_source_instances", (("source", "registrations"),))] == 2
    assert m[("meshdns_http_requests_total", (("method", "PUT"), ("route", "/v1/agent/service/register"),
                                              ("status", "200")))] == 2
    assert m[("meshdns_split_answers_total", (("split", "billing"), ("target", "legacy-billing")))] == 3
    assert m[("meshdns_registrations", (("kind", "service"),))] == 2
    assert m[("meshdns_registrations", (("kind", "check"),))] == 2
    assert m[("meshdns_checks", (("owner", "registrations"), ("status", "critical")))] == 1
    assert m[("meshdns_checks", (("owner", "registrations"), ("status", "passing")))] == 1
    assert m[("meshdns_catalog_instances", (("health", "critical"),))] == 1
