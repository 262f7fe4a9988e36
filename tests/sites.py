"""Several datacenters on one machine: each one a real `meshdns serve` process with its own config,
zones and data directory, peered with the others by URL."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import ServerProcess, api, query, rrset_values


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them are the same in TOML


def site_config(tmp_path: Path, dc: str, *, peers: list[dict] = (), zones: str = "", extra: str = "") -> Path:
    d = tmp_path / dc
    (d / "zones").mkdir(parents=True, exist_ok=True)
    if zones:
        (d / "zones" / "site.toml").write_text(zones)
    lines = [f'datacenter = "{dc}"', f'data_dir = "{d / "data"}"', f'zones = "{d / "zones"}"', extra]
    for peer in peers:
        lines.append("[[peer]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in peer.items()]
    path = d / "meshdns.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Sites:
    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.started: list[ServerProcess] = []

    def start(self, dc: str, *, peers: list[dict] = (), zones: str = "", extra: str = "",
              http_port: int = 0) -> ServerProcess:
        path = site_config(self.tmp_path, dc, peers=peers, zones=zones, extra=extra)
        args = ["--config", str(path)] + (["--http", f"127.0.0.1:{http_port}"] if http_port else [])
        proc = ServerProcess(*args).start()
        self.started.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.started:
            proc.stop()


@pytest.fixture
def sites(tmp_path):
    s = Sites(tmp_path)
    yield s
    s.stop()


def peer(dc: str, srv_or_url, **extra) -> dict:
    url = srv_or_url if isinstance(srv_or_url, str) else srv_or_url.http
    return {"datacenter": dc, "url": url, **extra}


def addresses(port: int, name: str, rdtype: str = "A") -> list[str]:
    return sorted(rrset_values(query(port, name, rdtype)))


def readyz(srv) -> dict:
    return api(srv.http, "GET", "/readyz").json()


def register(srv, body: dict) -> None:
    r = api(srv.http, "PUT", "/v1/agent/service/register", body)
    assert r.status == 200, r
