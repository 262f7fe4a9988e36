"""One rule for service names (DESIGN §4), enforced and stated the same way by every way a name comes in."""
import pytest

from harness import api, query, rrset_values, wait_until
from kube_double import service
from meshdns.catalog.validate import FieldError
from meshdns.sources.kubernetes.mapping import ClusterSettings, map_service

RULE = ("one DNS label: letters, digits, '-' and '_', starting and ending with a letter or digit, "
        "at most 63 characters")


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server(zones=tmp_path / "zones")


def test_an_underscore_is_accepted_and_answered(srv):
    body = {"Name": "my_svc", "ID": "my_svc-1", "Address": "10.0.0.7", "Port": 80}
    assert api(srv.http, "PUT", "/v1/agent/service/register", body).status == 200
    assert rrset_values(query(srv.dns_port, "my_svc.service.consul")) == ["10.0.0.7"]
    assert [e["ServiceID"] for e in api(srv.http, "GET", "/v1/catalog/service/my_svc").json()] == ["my_svc-1"]


@pytest.mark.parametrize("name", ["my.svc", "-web", "web_", "x" * 64, ""])
def test_a_name_that_is_not_one_label_is_refused_naming_name_and_the_rule(srv, name):
    reply = api(srv.http, "PUT", "/v1/agent/service/register", {"Name": name, "Address": "10.0.0.7"})
    assert reply.status == 400
    assert reply.text == f"Invalid request: Name: {name!r} is not a valid service name ({RULE})\n"
    reply = api(srv.http, "PUT", "/v1/catalog/register", {"Node": "n1", "Address": "10.0.0.8",
                                                          "Service": {"Service": name}})
    assert reply.status == 400
    assert reply.text == f"Invalid request: Service.Name: {name!r} is not a valid service name ({RULE})\n"


def test_urls_and_splits_state_the_same_rule(srv):
    reply = api(srv.http, "GET", "/v1/catalog/service/my.svc")
    assert reply.status == 400
    assert reply.text == f"Invalid request: service: 'my.svc' is not a valid service name ({RULE})\n"
    reply = api(srv.http, "GET", "/v1/health/service/my.svc")
    assert reply.status == 400 and RULE in reply.text
    splitter = {"Kind": "service-splitter", "Name": "billing", "Splits": [{"Weight": 100, "Service": "my.svc"}]}
    reply = api(srv.http, "PUT", "/v1/config", splitter)
    assert reply.status == 400
    assert reply.text == f"Invalid request: Splits[0].Service: 'my.svc' is not a valid service name ({RULE})\n"


def test_a_zone_file_states_the_same_rule(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    srv = start_server(zones=zones)
    (zones / "bad.toml").write_text('[[service]]\nname = "my.svc"\naddress = "10.0.0.9"\n')
    errors = wait_until(lambda: api(srv.http, "GET", "/readyz").json()["sources"]["zones"]["errors"],
                        what="the zone file is rejected")
    assert errors == {str(zones / "bad.toml"): f"{zones / 'bad.toml'}:1: service[0].name: 'my.svc' is not a "
                                               f"valid service name ({RULE})"}


def test_a_kubernetes_annotation_states_the_same_rule():
    svc = service("web", "default", cluster_ip="10.96.0.10", annotations={"meshdns.io/service-name": "my.svc"})
    with pytest.raises(FieldError) as info:
        map_service(svc, [], {}, ClusterSettings(cluster="c1", datacenter="dc1"))
    assert str(info.value) == f"annotation meshdns.io/service-name: 'my.svc' is not a valid service name ({RULE})"
