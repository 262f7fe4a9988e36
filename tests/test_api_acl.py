"""ACL: writes need a token whose prefixes cover the service; 403 changes nothing; secrets stay out of logs."""
import logging

import dns.rcode
import pytest

from harness import ServerProcess, api, make_config, query, rrset_values
from meshdns.config import ConfigError

BILLING = "b1ll1ng-s3cr3t"
MGMT = "m4n4g3m3nt-s3cr3t"
READER = "r34d3r-s3cr3t"
TOKENS = {"acl": {"tokens": [{"secret": BILLING, "write": ["billing", "legacy-"]},
                             {"secret": MGMT, "management": True},
                             {"secret": READER, "write": []}]}}


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server(TOKENS, zones=tmp_path / "zones")


def body(name, sid=None):
    return {"ID": sid or f"{name}-1", "Name": name, "Address": "127.0.0.5", "Port": 80}


def unchanged(srv):
    assert api(srv.http, "GET", "/v1/agent/services").json() == {}
    assert query(srv.dns_port, "billing.service.consul").rcode() == dns.rcode.NXDOMAIN
    assert srv.app.registrations.db.load("service") == {}


@pytest.mark.parametrize("headers", [
    {},
    {"X-Consul-Token": "wrong"},
    {"Authorization": "Bearer wrong"},
    {"X-Consul-Token": READER},
    {"Authorization": f"Basic {BILLING}"},
])
def test_writes_without_a_valid_token_are_refused(srv, headers):
    r = api(srv.http, "PUT", "/v1/agent/service/register", body("billing"), headers=headers)
    assert r.status == 403, r.text
    assert BILLING not in r.text and "wrong" not in r.text
    unchanged(srv)


def test_prefixes_decide_which_names_a_token_may_write(srv, caplog):
    caplog.set_level(logging.DEBUG)
    assert api(srv.http, "PUT", "/v1/agent/service/register", body("billing"), token=BILLING).status == 200
    assert api(srv.http, "PUT", "/v1/agent/service/register", body("legacy-billing"), token=BILLING).status == 200
    r = api(srv.http, "PUT", "/v1/agent/service/register", body("redis"), token=BILLING)
    assert r.status == 403 and "redis" in r.text
    assert sorted(api(srv.http, "GET", "/v1/agent/services").json()) == ["billing-1", "legacy-billing-1"]
    # taking over an ID that belongs to a name the token may not write is refused too
    assert api(srv.http, "PUT", "/v1/agent/service/register", body("redis", "r1"), token=MGMT).status == 200
    r = api(srv.http, "PUT", "/v1/agent/service/register", body("billing", "r1"), token=BILLING)
    assert r.status == 403
    assert api(srv.http, "GET", "/v1/agent/service/r1").json()["Service"] == "redis"
    # deregistering someone else's service
    r = api(srv.http, "PUT", "/v1/agent/service/deregister/r1", token=BILLING)
    assert r.status == 403 and "r1" in api(srv.http, "GET", "/v1/agent/services").json()
    assert api(srv.http, "PUT", "/v1/agent/service/deregister/r1",
               headers={"Authorization": f"Bearer {MGMT}"}).status == 200
    assert rrset_values(query(srv.dns_port, "billing.service.consul")) == ["127.0.0.5"]
    for secret in (BILLING, MGMT, READER):
        assert secret not in caplog.text


def test_check_and_maintenance_writes_are_covered(srv):
    api(srv.http, "PUT", "/v1/agent/service/register", body("redis", "r1"), token=MGMT)
    api(srv.http, "PUT", "/v1/agent/check/register", {"Name": "t", "TTL": "60s", "ServiceID": "r1",
                                                       "Status": "passing"}, token=MGMT)
    for path in ("/v1/agent/check/fail/t", "/v1/agent/service/maintenance/r1?enable=true",
                 "/v1/agent/check/deregister/t"):
        assert api(srv.http, "PUT", path, token=BILLING).status == 403, path
        assert api(srv.http, "PUT", path).status == 403, path
    assert rrset_values(query(srv.dns_port, "redis.service.consul")) == ["127.0.0.5"]
    # a node-level check needs a management token
    r = api(srv.http, "PUT", "/v1/agent/check/register", {"Name": "node", "TTL": "60s"}, token=BILLING)
    assert r.status == 403
    assert list(api(srv.http, "GET", "/v1/agent/checks").json()) == ["t"]


def test_catalog_writes(srv):
    esm = {"Node": "ext", "Address": "192.168.3.3", "Service": {"Service": "billing", "Port": 80}}
    assert api(srv.http, "PUT", "/v1/catalog/register", esm, token=BILLING).status == 403  # creates a node
    assert api(srv.http, "PUT", "/v1/catalog/register", esm).status == 403
    assert api(srv.http, "GET", "/v1/catalog/service/billing").json() == []
    assert api(srv.http, "PUT", "/v1/catalog/register", esm, token=MGMT).status == 200
    # the node exists: a service-only update is a service write
    update = dict(esm, SkipNodeUpdate=True, Service={"Service": "billing", "Port": 81})
    assert api(srv.http, "PUT", "/v1/catalog/register", update, token=BILLING).status == 200
    assert api(srv.http, "PUT", "/v1/catalog/deregister", {"Node": "ext"}, token=BILLING).status == 403
    assert api(srv.http, "GET", "/v1/catalog/service/billing").json()[0]["ServicePort"] == 81


def test_reads_anonymous_by_default(srv):
    assert api(srv.http, "GET", "/v1/catalog/services").status == 200
    assert api(srv.http, "GET", "/v1/catalog/services", token="wrong").status == 403
    assert api(srv.http, "GET", "/metrics").status == 200


def test_reads_need_a_token_when_anonymous_read_is_off(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    srv = start_server({**TOKENS, "http": {"anonymous_read": False}}, zones=tmp_path / "zones")
    for path in ("/v1/catalog/services", "/v1/health/service/x", "/v1/agent/services", "/metrics"):
        assert api(srv.http, "GET", path).status == 403, path
        assert api(srv.http, "GET", path, token=READER).status == 200, path
    assert api(srv.http, "GET", "/healthz").status == 200
    assert api(srv.http, "GET", "/readyz").status == 200


def test_no_tokens_means_loopback_only(tmp_path):
    with pytest.raises(ConfigError, match="http.listen: 0.0.0.0 is not a loopback address"):
        make_config(tmp_path, {"http": {"listen": "0.0.0.0:8500"}})
    make_config(tmp_path, {"http": {"listen": "0.0.0.0:8500", "insecure": True}})
    make_config(tmp_path, {"http": {"listen": "0.0.0.0:8500"}, **TOKENS})
    make_config(tmp_path, {"http": {"listen": "[::1]:8500"}})


def test_serve_refuses_a_public_api_without_tokens(tmp_path):
    proc = ServerProcess("--data-dir", str(tmp_path / "data"), "--zones", str(tmp_path))
    proc.args[proc.args.index("--http") + 1] = "0.0.0.0:0"
    with pytest.raises(RuntimeError, match="exited early"):
        proc.start()
    assert proc.proc.wait(10) == 2
    assert "--http-insecure" in proc.stderr() and "acl.tokens" in proc.stderr()


def splits(srv):
    return [(s["Name"], [t["Service"] for t in s["Splits"]])
            for s in api(srv.http, "GET", "/v1/config/service-splitter").json()]


def test_config_entry_writes_need_a_token_covering_the_split_name(srv):
    for name in ("billing-v1", "billing-v2", "redis"):
        assert api(srv.http, "PUT", "/v1/agent/service/register", body(name), token=MGMT).status == 200

    def splitter(name, **extra):
        return {"Kind": "service-splitter", "Name": name, **extra,
                "Splits": [{"Weight": 50, "Service": "billing-v1"}, {"Weight": 50, "Service": "billing-v2"}]}
    assert api(srv.http, "PUT", "/v1/config", splitter("redis"), token=MGMT).status == 200
    before = (splits(srv), srv.app.registrations.db.load("service-splitter"),
              sorted(rrset_values(query(srv.dns_port, "redis.service.consul"))))
    refused = [({}, splitter("billing")),
               ({"X-Consul-Token": "wrong"}, splitter("billing")),
               ({"X-Consul-Token": READER}, splitter("billing")),
               ({"X-Consul-Token": BILLING}, splitter("redis")),
               ({"X-Consul-Token": BILLING}, {k.upper(): v for k, v in splitter("redis").items()}),  # NAME
               ({"X-Consul-Token": BILLING}, {**splitter("billing"), "name": "redis"})]              # two spellings
    for headers, entry in refused:
        r = api(srv.http, "PUT", "/v1/config", entry, headers=headers)
        assert r.status == 403, (headers, entry, r)
    for headers in ({}, {"X-Consul-Token": READER}, {"X-Consul-Token": BILLING}, {"Authorization": "Bearer x"}):
        r = api(srv.http, "DELETE", "/v1/config/service-splitter/redis", headers=headers)
        assert r.status == 403, (headers, r)
    # nothing changed: the API, the disk and DNS
    assert (splits(srv), srv.app.registrations.db.load("service-splitter"),
            sorted(rrset_values(query(srv.dns_port, "redis.service.consul")))) == before
    # the right tokens may
    assert api(srv.http, "PUT", "/v1/config", splitter("billing"), token=BILLING).status == 200
    assert api(srv.http, "DELETE", "/v1/config/service-splitter/billing", token=BILLING).status == 200
    assert api(srv.http, "DELETE", "/v1/config/service-splitter/redis", token=MGMT).status == 200
    assert splits(srv) == []


def test_a_token_read_from_a_secret_file(start_server, tmp_path, caplog):
    """As a mounted Kubernetes Secret gives it: one file per token, often with a trailing newline."""
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "acl" / "registrar"
    secret.parent.mkdir()
    secret.write_text(BILLING + "\n")
    srv = start_server({"acl": {"tokens": [{"secret_file": str(secret), "write": ["billing"]}]}},
                       zones=tmp_path / "zones")
    assert api(srv.http, "PUT", "/v1/agent/service/register", body("billing")).status == 403
    assert api(srv.http, "PUT", "/v1/agent/service/register", body("billing"), token=BILLING).status == 200
    assert api(srv.http, "GET", "/readyz").status == 200      # probes need no token
    assert BILLING not in caplog.text


@pytest.mark.parametrize("case", ["missing", "empty", "both"])
def test_an_unusable_secret_file_stops_start_up_naming_it(tmp_path, case):
    from meshdns.app import build
    secret = tmp_path / "registrar"
    if case == "empty":
        secret.write_text("\n")
    token = {"secret_file": str(secret), **({"secret": BILLING} if case == "both" else {})}
    message = {"missing": f"acl.tokens[0].secret_file: cannot read {secret}: No such file",
               "empty": f"acl.tokens[0].secret_file: {secret} is empty",
               "both": "acl.tokens[0].secret: give secret or secret_file, not both"}[case]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build(make_config(tmp_path, {"acl": {"tokens": [token]}}))
