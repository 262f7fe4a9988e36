"""A data directory written before the revisioned store opens with everything in it, indexes included.

tests/data/meshdns-schema2.sql is the meshdns.db an earlier meshdns wrote
(registrations, statuses, a split, an intention). The first start copies it
into the new store with its revisions; meshdns.db is only read, never
changed; later writes continue from its revision.
"""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from harness import ServerProcess, api, query, rrset_values
from meshdns.store.legacy import LEGACY_DB

DUMP = Path(__file__).parent / "data" / "meshdns-schema2.sql"


def legacy_dir(tmp_path: Path) -> tuple[Path, Path]:
    data, zones = tmp_path / "data", tmp_path / "zones"
    data.mkdir()
    zones.mkdir()
    (zones / "static.toml").write_text('[[service]]\nname = "static"\naddress = "127.3.0.1"\nport = 80\n')
    with sqlite3.connect(data / LEGACY_DB) as conn:
        conn.executescript(DUMP.read_text())
    return data, zones


def stored(data: Path) -> tuple[dict[tuple[str, str], tuple[int, int]], int]:
    """(kind, key) -> (create, mod) revision, and the store revision, as the old file has them."""
    with sqlite3.connect(data / LEGACY_DB) as conn:
        rows = conn.execute("SELECT kind, key, create_revision, mod_revision FROM records").fetchall()
        revision = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
    return {(kind, key): (c, m) for kind, key, c, m in rows}, revision


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def visible(proc) -> dict:
    services = api(proc.http, "GET", "/v1/catalog/service/web").json()
    checks = api(proc.http, "GET", "/v1/health/checks/web").json()
    ext = api(proc.http, "GET", "/v1/health/service/ext").json()
    split = api(proc.http, "GET", "/v1/config/service-splitter/shop").json()
    intention = api(proc.http, "GET", "/v1/config/service-intentions/web").json()
    return {"services": {s["ServiceID"]: (s["ServiceAddress"], s["CreateIndex"], s["ModifyIndex"]) for s in services},
            "checks": {c["CheckID"]: (c["Status"], c["Output"], c["CreateIndex"], c["ModifyIndex"]) for c in checks},
            "ext": [(e["Service"]["ID"], e["Checks"][0]["Status"], e["Service"]["CreateIndex"]) for e in ext],
            "split": (split["Splits"], split["CreateIndex"], split["ModifyIndex"]),
            "intention": (intention["Sources"][0]["Action"], intention["CreateIndex"], intention["ModifyIndex"]),
            "dns": sorted(rrset_values(query(proc.dns_port, "web.service.consul")))}


def test_a_data_dir_written_before_the_revisioned_store_keeps_records_and_indexes(tmp_path):
    data, zones = legacy_dir(tmp_path)
    revisions, store_revision = stored(data)
    before = digest(data / LEGACY_DB)
    proc = ServerProcess("--data-dir", str(data), "--zones", str(zones)).start()
    try:
        seen = visible(proc)
        assert seen["services"] == {f"web-{i}": (f"127.2.0.{i + 1}", *revisions[("service", f"agent/web-{i}")])
                                    for i in range(3)}
        status_mod = revisions[("check-status", "agent/ttl-1")][1]
        assert seen["checks"]["ttl-1"] == ("critical", "down", revisions[("check", "agent/ttl-1")][0], status_mod)
        assert seen["checks"]["ttl-0"][:2] == ("passing", "")
        assert seen["checks"]["_service_maintenance:web-2"][0] == "critical"
        assert seen["ext"] == [("ext", "warning", revisions[("service", "dc1/ext/ext")][0])]
        assert seen["split"][1:] == revisions[("service-splitter", "shop")]
        assert seen["intention"] == ("deny", *revisions[("service-intentions", "web")])
        assert seen["dns"] == ["127.2.0.1"]   # web-1 failing, web-2 in maintenance
        reply = api(proc.http, "PUT", "/v1/agent/service/register", {"ID": "web-9", "Name": "web",
                                                                      "Address": "127.2.0.9", "Port": 80})
        assert reply.status == 200
        new = visible(proc)["services"]["web-9"]
        assert new[1:] == (store_revision + 1, store_revision + 1)   # writes go on from the old revision
        assert proc.stop() == 0, proc.stderr()
    finally:
        proc.kill()
    assert digest(data / LEGACY_DB) == before                        # only read
    proc = ServerProcess("--data-dir", str(data), "--zones", str(zones)).start()
    try:  # the second start reads the new store only: the registration made since is there
        again = visible(proc)
        assert again["services"] == {**seen["services"], "web-9": new}
        assert again["checks"] == seen["checks"] and again["split"] == seen["split"]
    finally:
        proc.kill()
    assert digest(data / LEGACY_DB) == before
