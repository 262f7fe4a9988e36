"""The web page in a real browser: Debian's Chromium driven by Playwright, against a real `meshdns serve`.

No browser is ever downloaded (`apt-get install chromium`; Playwright is pointed at
/usr/bin/chromium). Every request the page makes is recorded, so tests can prove it
talks to no host but meshdns, and every console error is kept.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

from harness import ServerProcess, api

CHROMIUM = "/usr/bin/chromium"

ESTATE = """
# The VM side: the legacy monolith on two VMs in two zones.
[[node]]
name = "billing-vm-1"
address = "192.168.28.213"
meta = { zone = "eu-west-1a", rack = "r12" }

[[node]]
name = "billing-vm-2"
address = "192.168.28.214"
meta = { zone = "eu-west-1b", rack = "r14" }

[[service]]
name = "legacy-billing"
node = "billing-vm-1"
port = 8080
tags = ["legacy", "v1"]
meta = { team = "payments" }
weights = { passing = 10, warning = 1 }

[[service]]
name = "legacy-billing"
node = "billing-vm-2"
port = 8080
tags = ["legacy", "v1"]
meta = { team = "payments" }
weights = { passing = 10, warning = 1 }

[[service]]
name = "redis"
address = "192.168.30.21"
port = 6379
tags = ["cache"]

# The migration: clients ask for billing; 90 % still go to the VMs.
[[split]]
name = "billing"
targets = [{ service = "legacy-billing", weight = 90 }, { service = "billing", tag = "v2", weight = 10 }]
"""

CONFIG = """
[dns]
rng_seed = 7

[[acl.tokens]]
secret = "ops-token"
management = true

[[acl.tokens]]
secret = "viewer-token"
write = ["reports"]
"""

V2_CHECK = "service:billing-v2-1"


@contextmanager
def chromium():
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (sh tests/install-tools.sh); "
                           "never `playwright install`")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        # the kernel sandbox needs a non-root user; tests run as root in CI
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            browser.close()


class Estate:
    """A meshdns on a zones dir holding a 90/10 billing split, with the new side registered over the API."""

    def __init__(self, tmp_path: Path, *, zone_text: str = ESTATE, extra_zones: dict[str, str] | None = None,
                 config: str = CONFIG):
        self.zones = tmp_path / "zones"
        self.zones.mkdir()
        (self.zones / "estate.toml").write_text(zone_text)
        for name, text in (extra_zones or {}).items():
            (self.zones / name).write_text(text)
        self.config = tmp_path / "meshdns.toml"
        self.config.write_text(config)
        self.server = ServerProcess("--config", str(self.config), "--zones", str(self.zones),
                                    "--data-dir", str(tmp_path / "data"))

    def start(self, *, register: bool = True) -> "Estate":
        self.server.start()
        if register:
            self.register({"Name": "billing", "ID": "billing-v2-1", "Address": "10.2.0.1", "Port": 8080,
                           "Tags": ["v2"], "Meta": {"zone": "eu-west-1a", "version": "2.0.0"},
                           "Check": {"TTL": "10m", "Status": "passing"}})
            self.check(V2_CHECK, "passing", "HTTP GET /health: 200 OK in 12 ms")
        return self

    @property
    def base(self) -> str:
        return self.server.http

    def register(self, body: dict) -> None:
        reply = api(self.base, "PUT", "/v1/agent/service/register", body, token="ops-token")
        assert reply.status == 200, reply

    def check(self, check_id: str, status: str, output: str) -> None:
        reply = api(self.base, "PUT", f"/v1/agent/check/update/{check_id}", {"Status": status, "Output": output},
                    token="ops-token")
        assert reply.status == 200, reply

    def fail(self, check_id: str, note: str) -> None:
        """A TTL check reported failing (PUT /v1/agent/check/fail/<id>?note=...)."""
        reply = api(self.base, "PUT", f"/v1/agent/check/fail/{check_id}?{urlencode({'note': note})}",
                    token="ops-token")
        assert reply.status == 200, reply

    def stop(self) -> None:
        self.server.stop()


class Recorder:
    """Every URL a page asks for (and the headers it sent), and every console error it logs."""

    def __init__(self, context):
        self.requests: list[tuple[str, str, dict]] = []
        self.errors: list[str] = []
        context.route("**/*", self._route)

    def _route(self, route) -> None:
        request = route.request
        self.requests.append((request.method, request.url, dict(request.headers)))
        route.continue_()

    def watch(self, page) -> None:
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def urls(self) -> list[str]:
        return [url for _, url, _ in self.requests]
