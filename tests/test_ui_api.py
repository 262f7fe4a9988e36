"""The page's files under /ui/ and the two reads made for it, over HTTP against the real server."""
import asyncio
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter

import pytest

from harness import ROOT, api, query, wait_until
from meshdns.api.ui import SplitAnswers, service_summaries
from meshdns.catalog.model import Health, Instance, SourceState
from meshdns.catalog.store import Store
from test_topology_api import ZONE


@pytest.fixture
def srv(start_server, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "estate.toml").write_text(ZONE)
    return start_server({"acl": {"tokens": [{"secret": "ops-secret", "management": True}]}}, zones=zones)


def test_the_page_and_its_modules_are_served_with_a_policy_that_keeps_it_on_this_server(srv):
    page = api(srv.http, "GET", "/ui/")
    assert page.status == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="app.js">' in page.text and 'for="token">Token</label>' in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("app.js", "api.js", "views/splits.js"):
        reply = api(srv.http, "GET", f"/ui/{path}")
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/javascript"), path
        assert "http://" not in reply.text and "https://" not in reply.text, path   # no other host
    assert api(srv.http, "GET", "/ui/style.css").headers["Content-Type"].startswith("text/css")
    redirect = api(srv.http, "GET", "/ui", headers={"Accept": "text/html"})
    assert redirect.status == 200 and redirect.text == page.text     # followed to /ui/


@pytest.mark.parametrize("path", ["/ui/nothing.js", "/ui/../api/ui.py", "/ui/%2e%2e/api/ui.py", "/ui/views/",
                                  "/ui/views/../../config.py"])
def test_nothing_but_the_page_files_is_served(srv, path):
    assert api(srv.http, "GET", path).status == 404


def test_the_services_summary_counts_instances_by_health_and_source_and_follows_changes(srv):
    reply = api(srv.http, "GET", "/v1/meshdns/services")
    assert reply.status == 200
    assert reply.json() == [
        {"Name": "billing", "Tags": ["v2"], "Instances": 1, "Health": {"passing": 1, "warning": 0, "critical": 0},
         "Sources": {"zones": 1}, "Split": True},
        {"Name": "legacy-billing", "Tags": [], "Instances": 1,
         "Health": {"passing": 1, "warning": 0, "critical": 0}, "Sources": {"zones": 1}, "Split": False},
        {"Name": "web", "Tags": [], "Instances": 1, "Health": {"passing": 1, "warning": 0, "critical": 0},
         "Sources": {"zones": 1}, "Split": False},
    ]
    index = reply.index
    woken = {}

    def wait():
        woken["reply"] = api(srv.http, "GET", f"/v1/meshdns/services?index={index}&wait=20s")
    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    assert "reply" not in woken                                   # parked until the catalog changes
    body = {"Name": "billing", "ID": "billing-3", "Address": "10.2.0.3", "Tags": ["v2"],
            "Check": {"TTL": "30s", "Status": "warning"}}
    assert api(srv.http, "PUT", "/v1/agent/service/register", body, token="ops-secret").status == 200
    waiter.join(20)
    billing = woken["reply"].json()[0]
    assert billing["Health"] == {"passing": 1, "warning": 1, "critical": 0}
    assert billing["Sources"] == {"registrations": 1, "zones": 1} and billing["Instances"] == 2


def test_reads_made_for_the_page_need_no_token_but_follow_anonymous_read(start_server, tmp_path):
    locked = start_server({"acl": {"tokens": [{"secret": "s", "management": True}]},
                           "http": {"anonymous_read": False}})
    for path in ("/v1/meshdns/services", "/v1/meshdns/split-answers", "/v1/meshdns/topology"):
        assert api(locked.http, "GET", path).status == 403, path
        assert api(locked.http, "GET", path, token="s").status == 200, path
    assert api(locked.http, "GET", "/ui/").status == 200         # the page itself holds no data


def test_split_answers_are_counted_by_target_as_the_metrics_counter_has_them(srv):
    for _ in range(20):
        query(srv.dns_port, "billing.service.consul")
    query(srv.dns_port, "billing.service.consul", "SRV")

    def counted():
        body = api(srv.http, "GET", "/v1/meshdns/split-answers").json()
        targets = body["splits"]["billing"]
        return body if sum(targets[t]["count"] for t in targets if t != "*") == 20 else None
    body = wait_until(counted, what="20 A answers counted")
    assert body["interval"] == 10 and body["index"] >= 1
    assert body["splits"]["billing"]["*"]["count"] == 1          # SRV answers carry every target
    assert set(body["splits"]["billing"]) <= {"legacy-billing", "billing:v2", "*"}


def test_split_answers_sampled_per_interval_and_a_waiter_wakes_on_the_next_sample():
    async def scenario():
        totals = Counter()
        answers = SplitAnswers(lambda: totals, interval=10, keep=3)
        answers.sample()
        totals[("billing", "legacy-billing")] += 9
        totals[("billing", "billing:v2")] += 1
        answers.sample()
        totals[("billing", "legacy-billing")] += 4
        answers.sample()
        totals[("billing", "billing:v2")] += 2       # not sampled yet: in the count, not in the series
        view = answers.view()
        assert view["index"] == 3
        assert view["splits"] == {"billing": {"billing:v2": {"count": 3, "series": [1, 0]},
                                              "legacy-billing": {"count": 13, "series": [9, 4]}}}
        for _ in range(3):
            answers.sample()
        assert answers.view()["splits"]["billing"]["legacy-billing"]["series"] == [0, 0, 0]   # keeps `keep`
        waiter = asyncio.ensure_future(answers.next_sample(30))
        await asyncio.sleep(0)
        assert not waiter.done()
        answers.sample()
        await asyncio.wait_for(waiter, 1)
    asyncio.run(scenario())


def test_the_wheel_carries_the_page(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "meshdns", source / "meshdns", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "wheel").glob("meshdns-*.whl")
    packaged = {n.removeprefix("meshdns/ui/") for n in zipfile.ZipFile(wheel).namelist() if n.startswith("meshdns/ui/")}
    shipped = {str(p.relative_to(ROOT / "meshdns" / "ui")) for p in (ROOT / "meshdns" / "ui").rglob("*") if p.is_file()}
    assert packaged == shipped and "index.html" in packaged and "views/splits.js" in packaged


def test_sources_are_named_as_readyz_names_them_and_maintenance_counts_as_critical():
    store = Store(datacenter="dc1")

    def inst(i, source, health=Health.PASSING, dc="dc1"):
        return Instance(id=f"api-{i}", service="api", datacenter=dc, address=f"10.0.0.{i}", health=health,
                        source=source)
    store.publish("t", SourceState(services={
        ("dc1", "api"): (inst(1, "kubernetes:prod"), inst(2, "kubernetes:prod", Health.WARNING),
                         inst(3, "registrations", Health.MAINTENANCE), inst(4, "zones", Health.CRITICAL)),
        ("dc2", "api"): (inst(5, "peer:dc2", dc="dc2"),)}))
    assert service_summaries(store.snapshot, "dc1") == [
        {"Name": "api", "Tags": [], "Instances": 4, "Health": {"passing": 1, "warning": 1, "critical": 2},
         "Sources": {"kubernetes/prod": 2, "registrations": 1, "zones": 1}, "Split": False}]
    assert service_summaries(store.snapshot, "dc2")[0]["Sources"] == {"peer/dc2": 1}
