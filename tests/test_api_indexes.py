"""CreateIndex/ModifyIndex belong to each entry and change only when that entry does (DESIGN §4, §8)."""
import json
import sqlite3

import pytest

from harness import ServerProcess, api, wait_until
from meshdns.store.legacy import LEGACY_DB as DB_NAME


def entry_index(base, path, pick):
    """(CreateIndex, ModifyIndex) of the entry `pick` selects from a list answer."""
    reply = api(base, "GET", path)
    assert reply.status == 200, reply
    found = [e for e in reply.json() if pick(e)]
    assert len(found) == 1, (path, reply.json())
    return found[0]["CreateIndex"], found[0]["ModifyIndex"], reply.index


def service_index(base, name, sid):
    return entry_index(base, f"/v1/catalog/service/{name}", lambda e: e["ServiceID"] == sid)


def check_index(base, name, cid):
    return entry_index(base, f"/v1/health/checks/{name}", lambda e: e["CheckID"] == cid)


def register(base, sid, name="web", port=80, **extra):
    body = {"ID": sid, "Name": name, "Address": "127.0.0.20", "Port": port, **extra}
    assert api(base, "PUT", "/v1/agent/service/register", body).status == 200


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server(zones=tmp_path / "zones")


def test_a_service_keeps_its_indexes_while_others_change(srv):
    register(srv.http, "web-1")
    first = service_index(srv.http, "web", "web-1")
    create, modify, index = first
    assert 0 < create == modify <= index
    register(srv.http, "web-2")
    register(srv.http, "db-1", name="db")
    assert service_index(srv.http, "web", "web-1")[:2] == (create, modify)
    register(srv.http, "web-1")                                   # the same registration again: no change
    assert service_index(srv.http, "web", "web-1")[:2] == (create, modify)
    register(srv.http, "web-1", port=8080)                        # a real change
    create2, modify2, index2 = service_index(srv.http, "web", "web-1")
    assert create2 == create and modify < modify2 <= index2
    other = service_index(srv.http, "web", "web-2")
    assert other[0] == other[1] and other[1] not in (modify, modify2)


def test_a_checks_status_moves_the_check_not_the_service(srv):
    register(srv.http, "web-1", Check={"CheckID": "alive", "TTL": "1h"})
    service = service_index(srv.http, "web", "web-1")[:2]
    create, modify, _ = check_index(srv.http, "web", "alive")
    assert api(srv.http, "PUT", "/v1/agent/check/pass/alive").status == 200
    c2, m2, index = check_index(srv.http, "web", "alive")
    assert c2 == create and modify < m2 <= index
    assert api(srv.http, "PUT", "/v1/agent/check/pass/alive").status == 200    # a heartbeat changes nothing
    assert check_index(srv.http, "web", "alive")[:2] == (c2, m2)
    assert service_index(srv.http, "web", "web-1")[:2] == service
    health = api(srv.http, "GET", "/v1/health/service/web").json()[0]
    assert (health["Service"]["CreateIndex"], health["Service"]["ModifyIndex"]) == service
    assert (health["Checks"][0]["CreateIndex"], health["Checks"][0]["ModifyIndex"]) == (c2, m2)


def test_catalog_nodes_keep_their_indexes(srv):
    for name, address in (("n1", "10.0.0.1"), ("n2", "10.0.0.2")):
        body = {"Node": name, "Address": address, "Service": {"Service": "esm", "Port": 80}}
        assert api(srv.http, "PUT", "/v1/catalog/register", body).status == 200
    n1 = entry_index(srv.http, "/v1/catalog/nodes", lambda n: n["Node"] == "n1")[:2]
    assert api(srv.http, "PUT", "/v1/catalog/register", {"Node": "n2", "Address": "10.0.0.3"}).status == 200
    assert entry_index(srv.http, "/v1/catalog/nodes", lambda n: n["Node"] == "n1")[:2] == n1
    n2 = entry_index(srv.http, "/v1/catalog/nodes", lambda n: n["Node"] == "n2")
    assert n2[1] > n1[1] and n2[1] <= n2[2]


def test_zone_file_entries_change_only_when_they_do(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "a.toml").write_text('[[service]]\nname = "alpha"\naddress = "10.1.0.1"\n')
    (zones / "b.toml").write_text('[[service]]\nname = "beta"\naddress = "10.1.0.2"\n')
    srv = start_server(zones=zones)
    alpha = service_index(srv.http, "alpha", "alpha-10.1.0.1")[:2]
    beta = service_index(srv.http, "beta", "beta-10.1.0.2")[:2]
    register(srv.http, "web-1")
    (zones / "b.toml").write_text('[[service]]\nname = "beta"\naddress = "10.1.0.2"\nport = 99\n')
    wait_until(lambda: api(srv.http, "GET", "/v1/catalog/service/beta").json()[0]["ServicePort"] == 99)
    assert service_index(srv.http, "alpha", "alpha-10.1.0.1")[:2] == alpha
    create, modify, index = service_index(srv.http, "beta", "beta-10.1.0.2")
    assert create == beta[0] and beta[1] < modify <= index


def start(tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir(exist_ok=True)
    return ServerProcess("--data-dir", str(tmp_path / "data"), "--zones", str(zones)).start()


def test_registration_indexes_survive_a_restart_and_the_index_never_goes_back(tmp_path):
    proc = start(tmp_path)
    try:
        for i in range(5):
            register(proc.http, f"web-{i}", port=80 + i, Check={"CheckID": f"c{i}", "TTL": "1h"})
        assert api(proc.http, "PUT", "/v1/agent/check/pass/c3").status == 200
        services = {e["ServiceID"]: (e["CreateIndex"], e["ModifyIndex"])
                    for e in api(proc.http, "GET", "/v1/catalog/service/web").json()}
        checks = {c["CheckID"]: (c["CreateIndex"], c["ModifyIndex"])
                  for c in api(proc.http, "GET", "/v1/health/checks/web").json()}
    finally:
        proc.kill()
    proc = start(tmp_path)
    try:
        reply = api(proc.http, "GET", "/v1/catalog/service/web")
        assert {e["ServiceID"]: (e["CreateIndex"], e["ModifyIndex"]) for e in reply.json()} == services
        assert {c["CheckID"]: (c["CreateIndex"], c["ModifyIndex"])
                for c in api(proc.http, "GET", "/v1/health/checks/web").json()} == checks
        assert reply.index >= max(m for _, m in [*services.values(), *checks.values()])
        register(proc.http, "web-9")
        assert service_index(proc.http, "web", "web-9")[1] > max(m for _, m in services.values())
    finally:
        proc.kill()


def test_a_data_dir_of_the_previous_schema_opens_with_its_registrations(tmp_path):
    """A data directory written before revisions existed (schema 1) keeps every registration."""
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / DB_NAME)
    conn.execute("CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                 " PRIMARY KEY (kind, key)) WITHOUT ROWID")
    record = {"Datacenter": None, "Node": None, "Agent": True, "Maintenance": None,
              "Service": {"ID": "legacy-1", "Name": "legacy", "Tags": ["v1"], "Address": "10.9.0.1", "Port": 8080,
                          "Meta": {}, "Weights": {"Passing": 1, "Warning": 1}, "TaggedAddresses": {},
                          "EnableTagOverride": False}}
    splitter = {"entry": {"Kind": "service-splitter", "Name": "legacy",
                          "Splits": [{"Weight": 100, "Service": "legacy", "ServiceSubset": "v1"}]},
                "revision": 1700000000000000000}
    conn.executemany("INSERT INTO records VALUES (?, ?, ?)", [("service", "agent/legacy-1", json.dumps(record)),
                                                               ("service-splitter", "legacy", json.dumps(splitter))])
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    proc = start(tmp_path)
    try:
        entries = api(proc.http, "GET", "/v1/catalog/service/legacy").json()
        assert [(e["ServiceID"], e["ServiceAddress"], e["CreateIndex"], e["ModifyIndex"]) for e in entries] == \
            [("legacy-1", "10.9.0.1", 1, 1)]
        split = api(proc.http, "GET", "/v1/config/service-splitter/legacy").json()
        assert (split["Splits"], split["CreateIndex"], split["ModifyIndex"]) == \
            ([{"Weight": 100.0, "Service": "legacy", "ServiceSubset": "v1"}], 1, 1)
        register(proc.http, "legacy-2", name="legacy")
        assert service_index(proc.http, "legacy", "legacy-2")[:2] == (2, 2)
    finally:
        proc.kill()
