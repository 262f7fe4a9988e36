"""A Consul-shaped datacenter for tests: /v1/catalog/services and /v1/health/service/<name> with
blocking queries as a Consul server answers them, on 127.0.0.1, in a thread of its own.

The test steers it: change services (the index moves on), restore an older index
(as a snapshot restore does), answer a fixed X-Consul-Index, fail the next requests,
hold answers until released. Every request is logged with its query parameters.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from aiohttp import web


def entry(node: str, address: str, service: str, port: int, *, tags=(), status: str = "passing",
          service_id: str = "", service_address: str = "", node_status: str = "passing", dc: str = "dc2") -> dict:
    """One /v1/health/service entry as Consul returns it (a node check and a service check)."""
    sid = service_id or f"{service}-{node}"
    return {
        "Node": {"ID": "", "Node": node, "Address": address, "Datacenter": dc, "TaggedAddresses": {},
                 "Meta": {"rack": "r1"}, "CreateIndex": 5, "ModifyIndex": 5},
        "Service": {"ID": sid, "Service": service, "Tags": list(tags), "Address": service_address,
                    "Meta": {}, "Port": port, "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False,
                    "CreateIndex": 5, "ModifyIndex": 5},
        "Checks": [{"Node": node, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": node_status,
                    "ServiceID": "", "ServiceName": ""},
                   {"Node": node, "CheckID": f"service:{sid}", "Name": "check", "Status": status,
                    "ServiceID": sid, "ServiceName": service}],
    }


@dataclass
class Seen:
    path: str
    index: str | None
    wait: str | None
    dc: str | None
    token: str | None
    at: float


class ConsulDouble:
    def __init__(self, *, port: int = 0, token: str | None = None):
        self.services: dict[str, list[dict]] = {}
        self.index = 10
        self.fixed_index: int | None = None   # answer this X-Consul-Index whatever the state
        self.token = token
        self.failures: list[int] = []         # statuses for the next requests
        self.requests: list[Seen] = []
        self.parked = 0
        self._port = port
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._open: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="consul-double")

    # -- steering (from the test thread) -------------------------------------------

    def start(self) -> "ConsulDouble":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("consul double did not start")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, fn) -> None:
        done = threading.Event()

        def run():
            fn()
            done.set()
        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def set_service(self, name: str, entries: list[dict]) -> None:
        def change():
            self.services[name] = entries
            self.index += 1
            self._wake()
        self._call(change)

    def remove_service(self, name: str) -> None:
        def change():
            self.services.pop(name, None)
            self.index += 1
            self._wake()
        self._call(change)

    def restore(self, index: int, services: dict[str, list[dict]]) -> None:
        """As a snapshot restore: older content at a lower index, and every parked query answered."""
        def change():
            self.services = dict(services)
            self.index = index
            self._wake()
        self._call(change)

    def answer_index(self, index: int | None) -> None:
        self._call(lambda: setattr(self, "fixed_index", index))

    def fail_next(self, *statuses: int) -> None:
        self._call(lambda: self.failures.extend(statuses))

    def hold(self) -> None:
        self._call(lambda: self._open.clear())

    def release(self) -> None:
        self._call(lambda: self._open.set())

    def seen(self, path: str) -> list[Seen]:
        return [r for r in list(self.requests) if r.path == path]

    def stop(self) -> None:
        """Close the listener and every connection (parked queries too), then end the thread."""
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # -- the server -----------------------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _reported(self) -> int:
        return self.index if self.fixed_index is None else self.fixed_index

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._changed = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()
        app = web.Application()
        app.router.add_get("/v1/catalog/services", self._catalog)
        app.router.add_get("/v1/health/service/{name}", self._health)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self._port, reuse_address=True)
        loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        loop.run_forever()

    async def _answer(self, request: web.Request, body) -> web.StreamResponse:
        q = request.query
        self.requests.append(Seen(request.path, q.get("index"), q.get("wait"), q.get("dc"),
                                  request.headers.get("X-Consul-Token"), time.monotonic()))
        await self._open.wait()
        if self.failures:
            return web.Response(status=self.failures.pop(0), text="rpc error: no leader\n")
        if self.token is not None and request.headers.get("X-Consul-Token") != self.token:
            return web.Response(status=403, text="ACL not found\n")
        wanted = int(q["index"]) if q.get("index", "").isdigit() else 0
        if wanted >= 1 and self._reported() <= wanted:
            wait = float(q.get("wait", "300s").rstrip("s"))
            self.parked += 1
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
            except asyncio.TimeoutError:
                pass
            finally:
                self.parked -= 1
        return web.json_response(body(), headers={"X-Consul-Index": str(self._reported())})

    async def _catalog(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, lambda: {name: sorted({t for e in entries for t in e["Service"]["Tags"]})
                                                    for name, entries in self.services.items()})

    async def _health(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        return await self._answer(request, lambda: list(self.services.get(name, [])))
