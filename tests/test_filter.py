"""Consul's filter expression language, table by table; the entries are those of Consul's filtering docs."""
import pytest

from meshdns.api.filter import Filter
from meshdns.api.shapes import CATALOG_SERVICE, CHECK, HEALTH_SERVICE, SERVICE
from meshdns.catalog.validate import FieldError


def svc(sid, tags, meta, port):
    return {"ID": sid, "Service": "redis", "Tags": tags, "Meta": meta, "Port": port, "Address": "",
            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False, "Kind": "",
            "TaggedAddresses": {}, "Datacenter": "dc1"}


# Consul docs, Filtering > Agent API
AGENT_SERVICES = {
    "redis1": svc("redis1", ["primary", "production"], {"env": "production", "foo": "bar"}, 1234),
    "redis2": svc("redis2", ["secondary", "production"], {"env": "production", "foo": "bar"}, 1235),
    "redis3": svc("redis3", ["primary", "qa"], {"env": "qa"}, 1234),
}


@pytest.mark.parametrize("expression,expected", [
    ('Meta.env == "qa"', ["redis3"]),                              # the docs' example
    ('Meta["env"] == "qa"', ["redis3"]),
    ("Meta.env == qa", ["redis3"]),                                # a bare word is a value
    ('Meta.env != "qa"', ["redis1", "redis2"]),
    ('"primary" in Tags', ["redis1", "redis3"]),
    ('"primary" not in Tags', ["redis2"]),
    ('Tags contains "production"', ["redis1", "redis2"]),
    ('Tags not contains "production"', ["redis3"]),
    ("Port == 1234", ["redis1", "redis3"]),
    ('Port == "1235"', ["redis2"]),
    ("Port != 1234", ["redis2"]),
    ("Weights.Passing == 1", ["redis1", "redis2", "redis3"]),
    ("EnableTagOverride == false", ["redis1", "redis2", "redis3"]),
    ("EnableTagOverride == true", []),
    ('ID matches "^redis[12]$"', ["redis1", "redis2"]),
    ("ID matches `[13]$`", ["redis1", "redis3"]),
    ('ID not matches "1"', ["redis2", "redis3"]),
    ('"dis" in ID', ["redis1", "redis2", "redis3"]),                # substring of a string
    ('"foo" in Meta', ["redis1", "redis2"]),                       # a key of a map
    ('Meta.foo == "bar"', ["redis1", "redis2"]),
    ('Meta.foo != "bar"', ["redis3"]),                             # absent key: != holds
    ("Meta.foo is empty", ["redis3"]),
    ("Meta.foo is not empty", ["redis1", "redis2"]),
    ("Address is empty", ["redis1", "redis2", "redis3"]),
    ("Tags is not empty", ["redis1", "redis2", "redis3"]),
    ('Meta.foo matches "b"', ["redis1", "redis2"]),
    ('Meta.foo not matches "b"', ["redis3"]),
    # connecting expressions
    ('"primary" in Tags and Meta.env == "production"', ["redis1"]),
    ('Meta.env == "qa" or Port == 1235', ["redis2", "redis3"]),
    ('not Meta.env == "qa"', ["redis1", "redis2"]),
    ('not not Meta.env == "qa"', ["redis3"]),
    # <1> and not <2> or <3>  ==  (<1> and (not <2>)) or <3>
    ('Port == 1234 and not "qa" in Tags or ID == "redis2"', ["redis1", "redis2"]),
    ('(Port == 1234 and (not "qa" in Tags)) or ID == "redis2"', ["redis1", "redis2"]),
    ('Port == 1234 and (not "qa" in Tags or ID == "redis2")', ["redis1"]),
    ('( Meta.env == "qa" )', ["redis3"]),
    ('Port==1234 and"qa"in Tags', ["redis3"]),
])
def test_agent_services_table(expression, expected):
    assert sorted(Filter.parse(expression, SERVICE).select_values(AGENT_SERVICES)) == expected


# Consul docs, Filtering > Catalog API
def node(nid, name, meta, tags, env):
    return {"ID": nid, "Node": name, "Address": "198.18.0.1", "Datacenter": "dc1", "TaggedAddresses": None,
            "NodeMeta": meta, "ServiceKind": "", "ServiceID": "api-internal", "ServiceName": "api-internal",
            "ServiceTags": tags, "ServiceAddress": "", "ServiceWeights": {"Passing": 1, "Warning": 1},
            "ServiceMeta": {"environment": env}, "ServicePort": 9090, "ServiceEnableTagOverride": False,
            "ServiceTaggedAddresses": {}}


CATALOG = [node("b4f6", "node-1", {"agent": "true", "arch": "i386", "os": "darwin"}, ["tag"], "qa"),
           node("b4fa", "node-2", {"arch": "arm", "os": "linux"}, ["test", "tag"], "production"),
           node("b4fb", "node-4", {"arch": "i386", "os": "freebsd"}, [], "qa")]


@pytest.mark.parametrize("expression,expected", [
    ('NodeMeta.os == "linux"', ["node-2"]),                       # the docs' example
    ('ServiceMeta["environment"] == "qa"', ["node-1", "node-4"]),
    ('ServiceMeta.environment == "qa" and NodeMeta.arch != "arm"', ["node-1", "node-4"]),
    ("ServiceTags is empty", ["node-4"]),
    ('"tag" in ServiceTags', ["node-1", "node-2"]),
    ("TaggedAddresses is empty", ["node-1", "node-2", "node-4"]),   # null is empty
    ('"agent" in NodeMeta', ["node-1"]),
    ('NodeMeta.agent == "true"', ["node-1"]),
    ("ServiceWeights.Warning == 1 and ServicePort == 9090", ["node-1", "node-2", "node-4"]),
])
def test_catalog_service_table(expression, expected):
    assert [e["Node"] for e in Filter.parse(expression, CATALOG_SERVICE).select(CATALOG)] == expected


def check(cid, status, service=""):
    return {"Node": "node-1", "CheckID": cid, "Name": cid, "Status": status, "Notes": "", "Output": "",
            "ServiceID": service, "ServiceName": service, "ServiceTags": [], "Type": "", "Interval": "",
            "Timeout": "", "ExposedPort": 0}


# Consul docs, Filtering > Health API
NODE_CHECKS = [check("node-health", "critical"), check("svc-web-health", "warning", "web")]


def test_health_checks_table():
    assert [c["CheckID"] for c in Filter.parse('ServiceName != ""', CHECK).select(NODE_CHECKS)] == ["svc-web-health"]
    assert [c["CheckID"] for c in Filter.parse("Status == critical", CHECK).select(NODE_CHECKS)] == ["node-health"]


def instance(sid, *checks):
    return {"Node": {"ID": "", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1", "TaggedAddresses": {},
                     "Meta": {"rack": "r1"}},
            "Service": svc(sid, [], {}, 80), "Checks": list(checks)}


HEALTH = [instance("a", check("c1", "passing", "a"), check("c2", "passing", "a")),
          instance("b", check("c3", "passing", "b"), check("c4", "critical", "b")),
          instance("c")]


@pytest.mark.parametrize("expression,expected", [
    ("Checks.Status == passing", ["a", "b"]),            # any check passing
    ("Checks.Status != passing", ["b"]),                 # any check not passing
    ("not Checks.Status != passing", ["a", "c"]),        # every check passing
    ('"c4" in Checks.CheckID', ["b"]),
    ('Checks.CheckID matches "^c[13]$"', ["a", "b"]),
    ("Checks is empty", ["c"]),
    ('Node.Meta.rack == "r1" and Service.ID == "a"', ["a"]),
    ('Service.Service == "redis"', ["a", "b", "c"]),
])
def test_health_service_selects_through_the_checks_list(expression, expected):
    assert [e["Service"]["ID"] for e in Filter.parse(expression, HEALTH_SERVICE).select(HEALTH)] == expected


@pytest.mark.parametrize("expression,words", [
    ("Colour == red", ["Selector 'Colour' is not valid"]),
    ("service == redis", ["Selector 'service' is not valid", "did you mean Service"]),
    ("Weights.Heavy == 1", ["Selector 'Weights.Heavy' is not valid", "Passing, Warning"]),
    ("Port.Number == 1", ["Port has no fields"]),
    ("Port == eighty", ["'eighty' is not an integer"]),
    ("EnableTagOverride == maybe", ["not a boolean"]),
    ('Port matches "1"', ["'matches' does not apply to Port"]),
    ('Tags == "primary"', ["'==' does not apply to Tags, which is a list"]),
    ("Weights is empty", ["does not apply to Weights", "Passing, Warning"]),
    ('ID matches "("', ["not a regular expression"]),
    ('ID matches "\\d"', ["invalid escape", "raw string"]),
    ("Meta.env ==", ["column 12", "expected a value after '=='"]),
    ('Meta.env == "qa', ["column 13", "unterminated string"]),
    ('(Meta.env == "qa"', ["column 1", "unmatched '('"]),
    ('Meta.env == "qa")', ["column 17", "unexpected ')'"]),
    ('Meta.env == "qa" and', ["expression ends early"]),
    ("Meta.env", ["expected an operator"]),
    ("Meta.env is full", ["expected 'empty' after 'is'"]),
    ('"qa" == Meta.env', ["expected a selector, not the value"]),
    ('"qa" in "Tags"', ["expected a selector after 'in'"]),
    ("Port = 1", ["unexpected '='"]),
    ("   ", ["empty expression"]),
])
def test_bad_expressions_are_field_errors_that_say_what_is_wrong(expression, words):
    with pytest.raises(FieldError) as info:
        Filter.parse(expression, SERVICE)
    assert info.value.field == "filter"
    for word in words:
        assert word in info.value.message, info.value.message


def test_no_expression_keeps_everything():
    assert Filter.parse("", SERVICE).select_values(AGENT_SERVICES) == AGENT_SERVICES
    assert not Filter.parse(None, SERVICE)
