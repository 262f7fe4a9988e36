"""Blocking queries: parked until the answer changes, woken by the catalog (not by polling)."""
import random
import threading
import time

import pytest

from harness import api, wait_until
from meshdns.api.blocking import Watch


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server(zones=tmp_path / "zones")


class Blocked(threading.Thread):
    def __init__(self, base, path, timeout=30):
        super().__init__(daemon=True)
        self.base, self.path, self.timeout = base, path, timeout
        self.reply = None

    def run(self):
        self.reply = api(self.base, "GET", self.path, timeout=self.timeout)


def register(srv, sid, name, address):
    r = api(srv.http, "PUT", "/v1/agent/service/register", {"ID": sid, "Name": name, "Address": address})
    assert r.status == 200, r.text


def parked(srv, n=1):
    """Wait until n requests are parked on the server (not merely sent)."""
    wait_until(lambda: srv.app.api.ctx.watch.active == n, what=f"{n} blocking queries parked")


def test_woken_by_a_change_to_its_answer_only(srv):
    register(srv, "web-1", "web", "127.0.0.11")
    first = api(srv.http, "GET", "/v1/health/service/web")
    watcher = Blocked(srv.http, f"/v1/health/service/web?index={first.index}&wait=10m")
    watcher.start()
    parked(srv)
    watch = srv.app.api.ctx.watch
    register(srv, "db-1", "db", "127.0.0.12")  # another service: the answer for web is the same
    wait_until(lambda: watch.unchanged == 1, what="the watcher woke, recomputed, and kept waiting")
    assert watcher.reply is None and watch.active == 1
    register(srv, "web-2", "web", "127.0.0.13")
    watcher.join(20)   # well before its 10 minutes: woken by the change, not by the wait ending
    assert watcher.reply is not None and watcher.reply.status == 200
    assert sorted(e["Service"]["ID"] for e in watcher.reply.json()) == ["web-1", "web-2"]
    assert watcher.reply.index > first.index
    assert watch.unchanged == 1 and watch.active == 0   # one wake per change: no polling in between


def test_wait_expires_with_the_same_answer(srv):
    first = api(srv.http, "GET", "/v1/catalog/services")
    start = time.monotonic()
    again = api(srv.http, "GET", f"/v1/catalog/services?index={first.index}&wait=400ms")
    assert time.monotonic() - start >= 0.4     # never before the wait (later is fine on a busy machine)
    assert again.status == 200 and again.json() == first.json()
    assert again.index == first.index


def test_wait_is_jittered_by_at_most_a_sixteenth():
    watch = Watch(limit=1, rng=random.Random(7))
    waits = [watch.jittered(160.0) for _ in range(1000)]
    assert all(160.0 <= w <= 170.0 for w in waits) and max(waits) > 169 and min(waits) < 161


def test_the_wait_is_capped_by_http_max_wait(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    srv = start_server({"http": {"max_wait": "300ms"}}, zones=tmp_path / "zones")
    first = api(srv.http, "GET", "/v1/catalog/services")
    start = time.monotonic()
    again = api(srv.http, "GET", f"/v1/catalog/services?index={first.index}&wait=10m", timeout=30)
    assert again.status == 200 and again.index == first.index     # back long before 10 minutes
    assert time.monotonic() - start >= 0.3


def test_stale_or_future_index_returns_at_once(srv):
    first = api(srv.http, "GET", "/v1/catalog/services")
    register(srv, "web-1", "web", "127.0.0.11")
    for index in (first.index, first.index + 1000):  # moved on / from before a restart
        r = api(srv.http, "GET", f"/v1/catalog/services?index={index}&wait=10m", timeout=30)
        assert r.status == 200 and "web" in r.json()
    assert srv.app.api.ctx.watch.active == 0 and srv.app.api.ctx.watch.unchanged == 0   # never parked


def test_health_check_change_wakes_a_watcher(srv):
    register(srv, "web-1", "web", "127.0.0.11")
    api(srv.http, "PUT", "/v1/agent/check/register", {"Name": "ttl", "ServiceID": "web-1", "TTL": "60s",
                                                       "Status": "passing"})
    first = api(srv.http, "GET", "/v1/health/service/web?passing")
    assert len(first.json()) == 1
    watcher = Blocked(srv.http, f"/v1/health/service/web?passing&index={first.index}&wait=10m")
    watcher.start()
    parked(srv)
    assert watcher.reply is None
    api(srv.http, "PUT", "/v1/agent/check/fail/ttl")
    watcher.join(20)
    assert watcher.reply.json() == [] and watcher.reply.index > first.index


def test_bad_parameters(srv):
    r = api(srv.http, "GET", "/v1/catalog/services?index=abc")
    assert r.status == 400 and "index" in r.text
    r = api(srv.http, "GET", "/v1/catalog/services?index=1&wait=soon")
    assert r.status == 400 and "wait" in r.text


def test_blocking_queries_are_bounded(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    srv = start_server({"http": {"max_blocking_queries": 2}}, zones=tmp_path / "zones")
    index = api(srv.http, "GET", "/v1/catalog/services").index
    waiting = [Blocked(srv.http, f"/v1/catalog/services?index={index}&wait=20s") for _ in range(2)]
    for t in waiting:
        t.start()
    parked(srv, 2)
    r = api(srv.http, "GET", f"/v1/catalog/services?index={index}&wait=20s")
    assert r.status == 429 and r.headers["Retry-After"] == "1"
    assert api(srv.http, "GET", "/v1/catalog/services").status == 200  # non-blocking reads still work
    register(srv, "web-1", "web", "127.0.0.11")
    for t in waiting:
        t.join(10)
        assert t.reply.status == 200 and "web" in t.reply.json()
