"""Last write wins between a zone file, the API and a Kubernetes annotation, by the store's revision, across
restarts (DESIGN §2): not by file stamps or clocks."""
import json
import os

from harness import ROOT, ServerProcess, api, query, rrset_values, wait_until
from kube_double import KubeDouble, endpoint_slice, service

RBAC = ROOT / "deploy" / "kubernetes" / "rbac.yaml"
SERVICES = """\
[[service]]
name = "legacy-billing"
address = "10.1.0.1"

[[service]]
name = "billing"
address = "10.2.0.1"
tags = ["v2"]
"""


def zone_split(legacy, new):
    return (f'[[split]]\nname = "front"\ntargets = [{{ service = "legacy-billing", weight = {legacy} }},\n'
            f'           {{ service = "billing", tag = "v2", weight = {new} }}]\n')


def api_split(legacy, new, name="front", tag="v2"):
    return {"Kind": "service-splitter", "Name": name,
            "Splits": [{"Weight": legacy, "Service": "legacy-billing"},
                       {"Weight": new, "Service": "billing", "ServiceSubset": tag}]}


def served(proc, name="front"):
    """(source, weights) of the split in force."""
    body = api(proc.http, "GET", f"/v1/config/service-splitter/{name}").json()
    return body["Meta"]["meshdns-source"], [s["Weight"] for s in body["Splits"]]


def start(tmp_path, *extra):
    return ServerProcess("--data-dir", str(tmp_path / "data"), "--zones", str(tmp_path / "zones"), *extra).start()


def test_the_newest_write_wins_whatever_the_file_stamps_say_and_after_restarts(tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "billing.toml").write_text(SERVICES + zone_split(90, 10))
    proc = start(tmp_path)
    try:
        assert served(proc) == ("zones", [90, 10])
        assert api(proc.http, "PUT", "/v1/config", api_split(0, 100)).status == 200
        assert served(proc) == ("config", [0, 100])
        assert rrset_values(query(proc.dns_port, "front.service.consul")) == ["10.2.0.1"]
        # the zone file is touched, not changed, with a clock far ahead: it is not a new write
        future = 4_000_000_000
        os.utime(zones / "billing.toml", (future, future))
        (zones / "more.toml").write_text('[[service]]\nname = "probe"\naddress = "10.3.0.1"\n')
        wait_until(lambda: api(proc.http, "GET", "/v1/catalog/service/probe").json(), what="the zones reloaded")
        assert served(proc) == ("config", [0, 100])
    finally:
        proc.kill()
    proc = start(tmp_path)
    try:
        assert served(proc) == ("config", [0, 100]), "after a restart the newest write still wins"
        # now the zone file changes: that is the newest write
        (zones / "billing.toml").write_text(SERVICES + zone_split(80, 20))
        wait_until(lambda: served(proc) == ("zones", [80, 20]), what="the edited zone file wins")
    finally:
        proc.kill()
    proc = start(tmp_path)
    try:
        assert served(proc) == ("zones", [80, 20])
        assert api(proc.http, "PUT", "/v1/config", api_split(0, 100)).status == 200   # the same PUT again wins
        assert served(proc) == ("config", [0, 100])
        # a split taken out of the zone file and put back is a new write
        (zones / "billing.toml").write_text(SERVICES)
        (zones / "more.toml").write_text('[[service]]\nname = "probe2"\naddress = "10.3.0.2"\n')
        wait_until(lambda: api(proc.http, "GET", "/v1/catalog/service/probe2").json(), what="the zones reloaded")
        assert served(proc) == ("config", [0, 100])
        (zones / "billing.toml").write_text(SERVICES + zone_split(80, 20))
        wait_until(lambda: served(proc) == ("zones", [80, 20]), what="the split put back wins")
        assert proc.stop() == 0
    finally:
        proc.kill()
    proc = start(tmp_path)
    try:
        assert served(proc) == ("zones", [80, 20])
    finally:
        proc.kill()


def kube_config(tmp_path, double):
    kubeconfig = double.kubeconfig(tmp_path / "east.kubeconfig", context="east")
    path = tmp_path / "meshdns.toml"
    path.write_text(f'[[kubernetes]]\nname = "east"\nkubeconfig = {json.dumps(str(kubeconfig))}\n'
                    'watch_timeout = "2s"\nrequest_timeout = "1s"\nbackoff = "50ms"\nmax_backoff = "250ms"\n')
    return path


def synced(proc):
    """Wait until the cluster is read and its split (with the billing pods) is in the catalog."""
    wait_until(lambda: api(proc.http, "GET", "/readyz").json()["sources"]["kubernetes/east"]["synced"]
               and any("k8s" in e["ServiceTags"] for e in api(proc.http, "GET", "/v1/catalog/service/billing").json()),
               what="cluster synced")


def test_an_annotation_does_not_win_by_restarting(tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "legacy.toml").write_text('[[service]]\nname = "legacy-billing"\naddress = "10.1.0.1"\n')
    with KubeDouble(rbac=RBAC) as double:
        double.apply(service("billing", annotations={"meshdns.io/split": "legacy-billing=50,billing:k8s=50"}))
        double.apply(endpoint_slice("billing", endpoints=[("10.244.1.5", True)]))
        config = kube_config(tmp_path, double)
        proc = start(tmp_path, "--config", str(config))
        try:
            synced(proc)
            assert served(proc, "billing") == ("kubernetes:east", [50, 50])
            assert api(proc.http, "PUT", "/v1/config", api_split(100, 0, name="billing", tag="k8s")).status == 200
            assert served(proc, "billing") == ("config", [100, 0])
        finally:
            proc.kill()
        proc = start(tmp_path, "--config", str(config))
        try:
            synced(proc)
            assert served(proc, "billing") == ("config", [100, 0]), "the annotation was not written again"
            double.apply(service("billing", annotations={"meshdns.io/split": "legacy-billing=20,billing:k8s=80"}))
            wait_until(lambda: served(proc, "billing") == ("kubernetes:east", [20, 80]),
                       what="the changed annotation wins")
        finally:
            proc.kill()
        proc = start(tmp_path, "--config", str(config))
        try:
            synced(proc)
            assert served(proc, "billing") == ("kubernetes:east", [20, 80])
        finally:
            proc.kill()


def test_an_api_override_made_before_an_upgrade_stays_in_force(tmp_path):
    """A data directory from before revisions (schema 1): the API's split was written after the zone file's,
    so it won then; it still wins after the upgrade, until the zone file is written again."""
    import sqlite3
    import time
    from meshdns.store.legacy import LEGACY_DB as DB_NAME
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "billing.toml").write_text(SERVICES + zone_split(90, 10))
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / DB_NAME)
    conn.execute("CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                 " PRIMARY KEY (kind, key)) WITHOUT ROWID")
    splitter = {"entry": {"Kind": "service-splitter", "Name": "front",
                          "Splits": [{"Weight": 0, "Service": "legacy-billing"},
                                     {"Weight": 100, "Service": "billing", "ServiceSubset": "v2"}]},
                "revision": time.time_ns()}
    conn.execute("INSERT INTO records VALUES ('service-splitter', 'front', ?)", (json.dumps(splitter),))
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    for _ in range(2):
        proc = start(tmp_path)
        try:
            assert served(proc) == ("config", [0, 100])
        finally:
            proc.kill()
    proc = start(tmp_path)
    try:
        (zones / "billing.toml").write_text(SERVICES + zone_split(80, 20))
        wait_until(lambda: served(proc) == ("zones", [80, 20]), what="the edited zone file wins")
    finally:
        proc.kill()
