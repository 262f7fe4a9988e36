"""Blocking queries: parked until the answer changes, woken by the catalog (not by polling)."""
import threading
import time

import pytest

from harness import api


@pytest.fixture
def srv(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    return start_server(zones=tmp_path / "zones")


class Blocked(threading.Thread):
    def __init__(self, base, path):
        super().__init__(daemon=True)
        self.base, self.path = base, path
        self.reply = None
        self.returned_at = None

    def run(self):
        self.reply = api(self.base, "GET", self.path, timeout=30)
        self.returned_at = time.monotonic()


def register(srv, sid, name, address):
    r = api(srv.http, "PUT", "/v1/agent/service/register", {"ID": sid, "Name": name, "Address": address})
    assert r.status == 200, r.text


def test_returns_within_100ms_of_a_change_and_not_before(srv):
    register(srv, "web-1", "web", "127.0.0.11")
    first = api(srv.http, "GET", "/v1/health/service/web")
    watcher = Blocked(srv.http, f"/v1/health/service/web?index={first.index}&wait=20s")
    watcher.start()
    time.sleep(0.3)
    assert watcher.returned_at is None, "returned before anything changed"
    register(srv, "db-1", "db", "127.0.0.12")  # another service: the answer for web is the same
    time.sleep(0.3)
    assert watcher.returned_at is None, "woken by a change that does not touch its answer"
    changed_at = time.monotonic()
    register(srv, "web-2", "web", "127.0.0.13")
    watcher.join(10)
    assert watcher.reply is not None and watcher.reply.status == 200
    woke = watcher.returned_at - changed_at
    print(f"\nblocking query returned {woke * 1000:.1f} ms after the change was sent")
    assert 0 <= woke < 0.1
    assert sorted(e["Service"]["ID"] for e in watcher.reply.json()) == ["web-1", "web-2"]
    assert watcher.reply.index > first.index


def test_wait_expires_with_the_same_answer(srv):
    first = api(srv.http, "GET", "/v1/catalog/services")
    start = time.monotonic()
    again = api(srv.http, "GET", f"/v1/catalog/services?index={first.index}&wait=400ms")
    took = time.monotonic() - start
    assert again.status == 200 and again.json() == first.json()
    assert 0.4 <= took < 0.4 * 17 / 16 + 0.5
    assert again.index == first.index


def test_stale_or_future_index_returns_at_once(srv):
    first = api(srv.http, "GET", "/v1/catalog/services")
    register(srv, "web-1", "web", "127.0.0.11")
    for index in (first.index, first.index + 1000):  # moved on / from before a restart
        start = time.monotonic()
        r = api(srv.http, "GET", f"/v1/catalog/services?index={index}&wait=5s")
        assert r.status == 200 and time.monotonic() - start < 1.0
        assert "web" in r.json()


def test_health_check_change_wakes_a_watcher(srv):
    register(srv, "web-1", "web", "127.0.0.11")
    api(srv.http, "PUT", "/v1/agent/check/register", {"Name": "ttl", "ServiceID": "web-1", "TTL": "60s",
                                                       "Status": "passing"})
    first = api(srv.http, "GET", "/v1/health/service/web?passing")
    assert len(first.json()) == 1
    watcher = Blocked(srv.http, f"/v1/health/service/web?passing&index={first.index}&wait=20s")
    watcher.start()
    time.sleep(0.2)
    assert watcher.returned_at is None
    changed_at = time.monotonic()
    api(srv.http, "PUT", "/v1/agent/check/fail/ttl")
    watcher.join(10)
    assert watcher.reply.json() == [] and watcher.returned_at - changed_at < 0.1


def test_bad_parameters(srv):
    r = api(srv.http, "GET", "/v1/catalog/services?index=abc")
    assert r.status == 400 and "index" in r.text
    r = api(srv.http, "GET", "/v1/catalog/services?index=1&wait=soon")
    assert r.status == 400 and "wait" in r.text


def test_blocking_queries_are_bounded(start_server, tmp_path):
    (tmp_path / "zones").mkdir()
    srv = start_server({"http": {"max_blocking_queries": 2}}, zones=tmp_path / "zones")
    index = api(srv.http, "GET", "/v1/catalog/services").index
    parked = [Blocked(srv.http, f"/v1/catalog/services?index={index}&wait=20s") for _ in range(2)]
    for t in parked:
        t.start()
    deadline = time.monotonic() + 5
    while srv.app.api.ctx.watch.active < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    r = api(srv.http, "GET", f"/v1/catalog/services?index={index}&wait=20s")
    assert r.status == 429 and r.headers["Retry-After"] == "1"
    assert api(srv.http, "GET", "/v1/catalog/services").status == 200  # non-blocking reads still work
    register(srv, "web-1", "web", "127.0.0.11")
    for t in parked:
        t.join(10)
        assert t.reply.status == 200 and "web" in t.reply.json()
