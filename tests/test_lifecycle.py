"""One lifecycle: components start in dependency order and each closes exactly once, in reverse, whatever ends
the server (a stop, a task that dies, a start that fails); process-wide settings belong to `meshdns serve` only."""
from __future__ import annotations

import gc
import logging
import socket
from dataclasses import replace

import pytest

from harness import ServerProcess, make_config
from kube_double import KubeDouble
from meshdns import app as app_module
from meshdns.api.app import HttpApi
from meshdns.cli import run_server
from meshdns.dns.server import DnsServer
from meshdns.forward.forwarder import Forwarder
from meshdns.health.runner import HealthRunner
from meshdns.lifecycle import Component
from meshdns.sources.kubernetes.reverse import ReverseSync
from meshdns.sources.kubernetes.source import KubernetesSource
from meshdns.sources.registrations import Registrations
from meshdns.store.records import Records

CLOSABLE = (Records, HealthRunner, Registrations, KubernetesSource, ReverseSync, Forwarder, DnsServer, HttpApi)
# the reverse of the order they are built in: what uses a component closes before it
CLOSE_ORDER = ["HttpApi", "DnsServer", "Forwarder", "ReverseSync", "KubernetesSource", "Registrations",
               "HealthRunner", "Records"]


@pytest.fixture
def closes(monkeypatch):
    """Every close() of every component, in call order, whoever calls it (the component itself included)."""
    calls: list[object] = []
    for cls in CLOSABLE:
        def spy(original):
            async def close(self, *args, **kwargs):
                calls.append(self)
                return await original(self, *args, **kwargs)
            return close
        monkeypatch.setattr(cls, "close", spy(cls.close))
    return calls


@pytest.fixture
def double():
    with KubeDouble() as d:
        yield d


def full_config(tmp_path, double, **overrides):
    """Zones, registrations, a Kubernetes cluster with its reverse sync, forwarding: every closable component."""
    kubeconfig = double.kubeconfig(tmp_path / "east.kubeconfig", context="east")
    return make_config(tmp_path, {
        "kubernetes": [{"name": "east", "kubeconfig": str(kubeconfig), "sync_to_kubernetes": "externalname",
                        "watch_timeout": "2s", "request_timeout": "1s", "backoff": "50ms", "max_backoff": "250ms"}],
        "forwarding": {"recursors": ["127.0.0.1:9"]}, **overrides}, zones=tmp_path / "zones")


def names(calls: list[object]) -> list[str]:
    return [type(c).__name__ for c in calls]


def test_a_task_that_dies_stops_the_server_naming_it_and_closes_each_component_once(tmp_path, double, closes,
                                                                                    caplog):
    cfg = full_config(tmp_path, double)
    seen = {}

    async def main() -> None:
        app = app_module.build(cfg)
        seen["app"] = app

        async def dies() -> None:
            await app.kubernetes[0].synced_event.wait()   # every other task is up and running by then
            raise RuntimeError("disk on fire")

        app = replace(app, components=app.components + (Component("boom", run=dies),))
        await app_module.run(app, signals=False)

    with caplog.at_level(logging.ERROR, logger="meshdns"):
        assert run_server(main) == 1
    assert "stopped: boom failed: RuntimeError: disk on fire" in caplog.text
    assert names(closes) == CLOSE_ORDER
    assert len({id(c) for c in closes}) == len(closes)     # no component closed twice
    assert seen["app"].reverse_syncs[0] in closes and seen["app"].kubernetes[0] in closes


def test_a_stop_closes_each_component_once_in_reverse_order(tmp_path, double, closes):
    cfg = full_config(tmp_path, double)

    async def main() -> None:
        app = app_module.build(cfg)

        async def stop_when_synced() -> None:
            await app.kubernetes[0].synced_event.wait()
            app.stop.set()

        app = replace(app, components=app.components + (Component("stopper", run=stop_when_synced),))
        await app_module.run(app, signals=False)

    assert run_server(main) == 0
    assert names(closes) == CLOSE_ORDER


def test_a_start_that_fails_closes_every_component_once(tmp_path, closes, caplog):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        cfg = make_config(tmp_path, {"dns": {"listen": f"127.0.0.1:{taken.getsockname()[1]}"}},
                          zones=tmp_path / "zones")

        async def main() -> None:
            await app_module.run(app_module.build(cfg), signals=False)

        with caplog.at_level(logging.ERROR, logger="meshdns"):
            assert run_server(main) == 1
    finally:
        taken.close()
    assert "cannot listen for DNS on 127.0.0.1" in caplog.text
    assert names(closes) == ["HttpApi", "DnsServer", "Registrations", "HealthRunner", "Records"]


def test_an_in_process_server_changes_nothing_process_wide(start_server, tmp_path):
    """gc.freeze and the request-log filter are `meshdns serve`'s to set, not a side effect of building or
    running a server (tests and embedders run one inside their own process)."""
    frozen, threshold = gc.get_freeze_count(), gc.get_threshold()
    srv = start_server(zones=tmp_path / "zones")
    assert srv.dns_port and srv.http_port
    assert gc.get_freeze_count() == frozen and gc.get_threshold() == threshold
    assert logging.getLogger("meshdns.api.http").filters == []


def test_serve_logs_one_malformed_request_per_ten_seconds(tmp_path):
    (tmp_path / "zones").mkdir()
    proc = ServerProcess("--data-dir", str(tmp_path / "data"), "--zones", str(tmp_path / "zones")).start()
    try:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", proc.http_port), timeout=5) as conn:
                conn.sendall(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                assert conn.recv(100).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    finally:
        proc.stop()
    logged = [line for line in proc.stderr().splitlines() if "meshdns.api.http" in line]
    assert len(logged) == 1, logged
