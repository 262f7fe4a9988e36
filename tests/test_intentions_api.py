"""Intentions (Consul's service-intentions config entry): API, zone files, durability, the catalog snapshot."""
import pytest

from harness import ServerProcess, api, wait_until
from meshdns.catalog.intentions import intention_allows
from meshdns.catalog.model import SourceState
from meshdns.catalog.store import Store
from meshdns.sources.intentions import parse_intentions
from meshdns.workers import Replica, delta_for, full_delta


def entry(name="db", *sources):
    return {"Kind": "service-intentions", "Name": name,
            "Sources": [{"Name": n, "Action": a} for n, a in sources]}


DB = entry("db", ("web", "deny"), ("*", "allow"))


def sources_of(reply):
    return [(s["Name"], s["Action"], s["Precedence"]) for s in reply.json()["Sources"]]


@pytest.fixture
def srv(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    return start_server(zones=zones)


def test_put_get_list_delete(srv):
    base = srv.http
    assert api(base, "GET", "/v1/config/service-intentions").json() == []
    assert api(base, "GET", "/v1/config/service-intentions/db").status == 404
    reply = api(base, "PUT", "/v1/config", DB)
    assert reply.status == 200 and reply.json() is True
    got = api(base, "GET", "/v1/config/service-intentions/db")
    assert got.status == 200
    body = got.json()
    assert body["Kind"] == "service-intentions" and body["Name"] == "db"
    assert body["Meta"] == {"meshdns-source": "intentions"}
    assert 0 < body["CreateIndex"] == body["ModifyIndex"] <= got.index   # the entry's own write
    assert sources_of(got) == [("web", "deny", 9), ("*", "allow", 8)]   # exact beats the wildcard
    api(base, "PUT", "/v1/config", entry("API", ("Batch", "DENY")))     # names and actions in any case
    assert [e["Name"] for e in api(base, "GET", "/v1/config/service-intentions").json()] == ["api", "db"]
    assert sources_of(api(base, "GET", "/v1/config/service-intentions/api")) == [("batch", "deny", 9)]

    api(base, "PUT", "/v1/config", entry("db", ("web", "allow")))       # a second PUT replaces the entry
    again = api(base, "GET", "/v1/config/service-intentions/db")
    assert sources_of(again) == [("web", "allow", 9)]
    assert again.json()["CreateIndex"] == body["CreateIndex"] < again.json()["ModifyIndex"] <= again.index
    assert api(base, "DELETE", "/v1/config/service-intentions/db").status == 200
    assert api(base, "GET", "/v1/config/service-intentions/db").status == 404
    assert api(base, "DELETE", "/v1/config/service-intentions/db").status == 404
    # splitters are untouched by all this
    assert api(base, "GET", "/v1/config/service-splitter").json() == []


@pytest.mark.parametrize("body,field", [
    (entry("db", ("web", "maybe")), "Sources[0].Action: 'maybe' is not allow or deny"),
    (entry("db", ("web", "deny"), ("WEB", "allow")), "Sources[1].Name: 'web' is listed twice"),
    (entry("Not A Label", ("web", "deny")), "Name"),
    (entry("*", ("web", "deny")), "Name: a wildcard destination is not supported"),
    (entry("db", ("we b", "deny")), "Sources[0].Name"),
    ({**DB, "Sources": [{"Name": "web", "Permissions": [{"Action": "deny"}]}]}, "Sources[0].Permissions"),
    ({**DB, "Sources": [{"Name": "web", "Action": "deny", "Colour": "red"}]}, "Sources[0].Colour: unknown field"),
    ({**DB, "JWT": {}}, "JWT: unknown field"),
    ({**DB, "Sources": {"web": "deny"}}, "Sources: expected a list"),
    ({**DB, "Sources": ["web"]}, "Sources[0]: expected an object"),
])
def test_invalid_entry_is_400_naming_the_field_and_the_old_entry_stays(srv, body, field):
    base = srv.http
    api(base, "PUT", "/v1/config", DB)
    reply = api(base, "PUT", "/v1/config", body)
    assert reply.status == 400 and field in reply.text, reply
    assert sources_of(api(base, "GET", "/v1/config/service-intentions/db")) == [("web", "deny", 9), ("*", "allow", 8)]


def test_acl_a_token_must_may_write_the_destination(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    srv = start_server({"acl": {"tokens": [{"secret": "db-owner", "write": ["db"]},
                                           {"secret": "web-owner", "write": ["web"]}]}}, zones=zones)
    base = srv.http
    assert api(base, "PUT", "/v1/config", DB).status == 403                      # no token
    assert api(base, "PUT", "/v1/config", DB, token="web-owner").status == 403   # the source is not enough
    assert api(base, "GET", "/v1/config/service-intentions/db").status == 404
    assert api(base, "PUT", "/v1/config", {**DB, "name": "DB"}, token="db-owner").status == 200
    assert api(base, "DELETE", "/v1/config/service-intentions/db", token="web-owner").status == 403
    assert api(base, "GET", "/v1/config/service-intentions/db").status == 200
    assert api(base, "DELETE", "/v1/config/service-intentions/db", token="db-owner").status == 200


def test_entries_survive_kill_9(tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    args = ("--zones", str(zones), "--data-dir", str(tmp_path / "data"))
    proc = ServerProcess(*args).start()
    try:
        assert api(proc.http, "PUT", "/v1/config", DB).status == 200
        assert api(proc.http, "PUT", "/v1/config", entry("api", ("web", "allow"))).status == 200
        assert api(proc.http, "DELETE", "/v1/config/service-intentions/api").status == 200
    finally:
        proc.kill()
    proc = ServerProcess(*args).start()
    try:
        assert sources_of(api(proc.http, "GET", "/v1/config/service-intentions/db")) == \
            [("web", "deny", 9), ("*", "allow", 8)]
        assert api(proc.http, "GET", "/v1/config/service-intentions/api").status == 404
    finally:
        proc.stop()


ZONE_FILE = '''
[[service]]
name = "db"
address = "10.9.0.1"

[[intention]]
name = "db"
sources = [ { name = "web", action = "deny" }, { name = "*", action = "allow" } ]

[[intention]]
name = "ledger"
sources = [ { name = "billing", action = "allow" } ]
'''


def test_zone_file_entries_and_last_write_wins_with_the_api(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "views.toml").write_text(ZONE_FILE)
    srv = start_server({"dns": {"enforce_intentions": True, "intentions_default": "deny"}}, zones=zones)
    base = srv.http
    listing = api(base, "GET", "/v1/config/service-intentions").json()
    assert [(e["Name"], e["Meta"]["meshdns-source"]) for e in listing] == [("db", "zones"), ("ledger", "zones")]
    assert sources_of(api(base, "GET", "/v1/config/service-intentions/ledger")) == [("billing", "allow", 9)]

    # the catalog snapshot carries them, for the answer rules to read
    snap = srv.app.store.snapshot
    default = srv.app.cfg.dns.intentions_default
    assert not intention_allows(snap.intentions, {"web"}, "db", default=default)
    assert intention_allows(snap.intentions, {"batch"}, "db", default=default)
    assert intention_allows(snap.intentions, {"billing"}, "ledger", default=default)
    assert not intention_allows(snap.intentions, frozenset(), "ledger", default=default)   # no source matches

    # a later API write wins over the file; the file's entry is back when the API's is deleted
    api(base, "PUT", "/v1/config", entry("db", ("web", "allow")))
    got = api(base, "GET", "/v1/config/service-intentions/db").json()
    assert got["Meta"]["meshdns-source"] == "intentions"
    assert intention_allows(srv.app.store.snapshot.intentions, {"web"}, "db", default="deny")
    # the file changed after that API write: its new content is the newest write, so it wins
    (zones / "views.toml").write_text(ZONE_FILE.replace('action = "deny"', 'action = "deny" }, '
                                                        '{ name = "batch", action = "deny"', 1))
    srv.call(srv.app.zones.reload)
    wait_until(lambda: api(base, "GET", "/v1/config/service-intentions/db").json()["Meta"]["meshdns-source"]
               == "zones", timeout=30)
    assert not intention_allows(srv.app.store.snapshot.intentions, {"batch"}, "db", default="allow")
    api(base, "DELETE", "/v1/config/service-intentions/db")
    assert api(base, "GET", "/v1/config/service-intentions/db").json()["Meta"]["meshdns-source"] == "zones"
    assert not intention_allows(srv.app.store.snapshot.intentions, {"web"}, "db", default="deny")

    # removing the table from the file removes the entry
    (zones / "views.toml").write_text(ZONE_FILE.split("[[intention]]")[0])
    srv.call(srv.app.zones.reload)
    assert [e["Name"] for e in api(base, "GET", "/v1/config/service-intentions").json()] == []


@pytest.mark.parametrize("text,line,message", [
    ('[[intention]]\nname = "db"\nsources = [ { name = "web", action = "block" } ]\n',
     1, "intention[0].sources[0].action: 'block' is not allow or deny"),
    ('[[service]]\nname = "db"\naddress = "10.9.0.1"\n\n[[intention]]\nname = "db"\n'
     'sources = [ { name = "web", acton = "deny" } ]\n', 5, "intention[0].sources[0].acton: unknown key"),
    ('[[intention]]\nname = "db"\nsources = [ { name = "web", action = "deny" }, { name = "web", action = "allow" } ]\n',
     1, "intention[0].sources[1].name: 'web' is listed twice"),
    ('[[intention]]\nname = "db"\nsources = []\n[[intention]]\nname = "DB"\nsources = []\n',
     4, "intention[1].name: a second [[intention]] for 'db'"),
    ('[[intention]]\nsources = []\n', 1, "intention[0].name"),
    ('[[intention]]\nname = "db"\nsources = "web"\n', 1, "intention[0].sources: expected a list"),
    ('[[intention]]\nname = "db"\ndestination = "x"\n', 1, "intention[0].destination: unknown key"),
])
def test_zone_file_errors_name_file_and_line_and_keep_the_old_content(start_server, tmp_path, text, line, message):
    zones = tmp_path / "zones"
    zones.mkdir()
    path = zones / "views.toml"
    path.write_text('[[intention]]\nname = "db"\nsources = [ { name = "web", action = "deny" } ]\n')
    srv = start_server(zones=zones)
    path.write_text(text)
    srv.call(lambda: srv.app.zones.reload(force=True))
    errors = api(srv.http, "GET", "/readyz").json()["sources"]["zones"]["errors"]
    assert errors[str(path)].startswith(f"{path}:{line}: {message}"), errors
    # the previous content is still in force
    assert sources_of(api(srv.http, "GET", "/v1/config/service-intentions/db")) == [("web", "deny", 9)]


def test_intentions_reach_dns_worker_replicas():
    """Workers answer from a replica of the merged catalog: intentions travel with it."""
    primary = Store(datacenter="dc1")
    replica = Replica(Store(datacenter="dc1"))
    replica.apply(full_delta(primary.snapshot))
    changes = []
    primary.subscribe_changes(lambda snap, change: changes.append(delta_for(snap, change)))
    db = parse_intentions(DB)
    primary.publish("intentions", SourceState(intentions={"db": db}))
    replica.apply(changes[-1])
    assert dict(replica.store.snapshot.intentions) == {"db": db}
    primary.publish("intentions", SourceState())
    replica.apply(changes[-1])
    assert dict(replica.store.snapshot.intentions) == {}
    # a restarted worker gets everything in one full copy
    primary.publish("intentions", SourceState(intentions={"db": db}))
    fresh = Replica(Store(datacenter="dc1"))
    fresh.apply(full_delta(primary.snapshot))
    assert dict(fresh.store.snapshot.intentions) == {"db": db}
