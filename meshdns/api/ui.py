"""The web page (GET /ui/) and the two summaries only it needs.

The page's files are package data (meshdns/ui/), served as they are: no build
step, and a Content-Security-Policy that lets the page talk to this server
only. Everything else the page shows comes from the API every client uses;
two reads are added because the page would otherwise have to make them
itself, expensively: a per-service summary of the catalog (one blocking
query instead of one per service) and answers by split target over the last
minutes (the counters behind meshdns_split_answers_total, sampled here).
"""
from __future__ import annotations

import asyncio
from collections import Counter, deque
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Callable

from aiohttp import web

from ..catalog.snapshot import Snapshot
from .blocking import parse_blocking
from .common import CTX, ctx_of, datacenter, json_response, read
from .shapes import status_name

routes = web.RouteTableDef()

HEALTH_WORDS = ("passing", "warning", "critical")
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def page_files() -> dict[str, Traversable]:
    """The page's files by their path under /ui/ (a fixed list: nothing else is ever served)."""
    root = resources.files("meshdns") / "ui"
    found: dict[str, Traversable] = {}

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif any(entry.name.endswith(ext) for ext in CONTENT_TYPES):
                found[prefix + entry.name] = entry
    walk(root, "")
    return found


FILES = web.AppKey("ui_files", dict)


@routes.get("/ui")
async def ui_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


@routes.get("/ui/{path:.*}")
async def ui_file(request: web.Request) -> web.Response:
    path = request.match_info["path"] or "index.html"
    entry = request.app[FILES].get(path)
    if entry is None:
        raise web.HTTPNotFound(text=f"No such file in the web UI: {path}\n")
    kind = CONTENT_TYPES[path[path.rfind("."):]]
    return web.Response(body=entry.read_bytes(), content_type=kind, charset="utf-8", headers=SECURITY_HEADERS)


# -- the services list ------------------------------------------------------------------


def source_name(source: str) -> str:
    """An instance's source as /readyz names it ("kubernetes:prod" -> "kubernetes/prod")."""
    return source.replace(":", "/", 1)


def service_summaries(snap: Snapshot, dc: str) -> list[dict]:
    out = []
    for (sdc, name), insts in sorted(snap.services.items()):
        if sdc != dc or not insts:
            continue
        health = Counter(status_name(i.health) for i in insts)
        out.append({"Name": insts[0].service, "Tags": sorted({t for i in insts for t in i.tags}),
                    "Instances": len(insts), "Health": {word: health.get(word, 0) for word in HEALTH_WORDS},
                    "Sources": dict(sorted(Counter(source_name(i.source) for i in insts).items())),
                    "Split": name in snap.splits})
    return out


@routes.get("/v1/meshdns/services")
async def services(request: web.Request) -> web.Response:
    """Every service with its instance counts by health and by source; a blocking query."""
    dc = datacenter(request)
    return await read(request, lambda snap, *_: service_summaries(snap, dc))  # no per-entry index


# -- answers by split target ------------------------------------------------------------


class SplitAnswers:
    """The answers-by-(split, target) counters, sampled every `interval` seconds for the last minutes."""

    def __init__(self, totals: Callable[[], Counter], *, interval: float = 10.0, keep: int = 90):
        self.totals = totals
        self.interval = interval
        self.samples: deque[Counter] = deque(maxlen=keep + 1)
        self.index = 0
        self._event = asyncio.Event()
        self._closed = False

    def sample(self) -> None:
        self.samples.append(Counter(self.totals()))
        self.index += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def next_sample(self, timeout: float) -> None:
        if not self._closed:
            try:  # asyncio.timeout, not wait_for: wait_for swallows a cancel (shutdown) that comes as the wait ends
                async with asyncio.timeout(timeout):
                    await self._event.wait()
            except TimeoutError:
                pass

    def close(self) -> None:
        self._closed = True
        self._event.set()

    def view(self) -> dict:
        """Per split and target: answers so far, and answers in each sampled interval (oldest first)."""
        now = self.totals()
        samples = list(self.samples)
        splits: dict[str, dict] = {}
        for split, target in sorted(set(now).union(*samples), key=str):
            series = [b.get((split, target), 0) - a.get((split, target), 0) for a, b in zip(samples, samples[1:])]
            splits.setdefault(split, {})[target] = {"count": now.get((split, target), 0), "series": series}
        return {"index": self.index, "interval": self.interval, "splits": splits}


SPLIT_ANSWERS = web.AppKey("split_answers", SplitAnswers)


@routes.get("/v1/meshdns/split-answers")
async def split_answers(request: web.Request) -> web.Response:
    """Answers by split target; `?index=N` (the last answer's index) waits for the next sample."""
    ctx = ctx_of(request)
    ctx.acl.require_read(request)
    index, wait = parse_blocking(request.query, max_wait=ctx.cfg.http.max_wait)
    answers = request.app[SPLIT_ANSWERS]
    if index is not None and index == answers.index:
        with ctx.watch.slot():
            await answers.next_sample(ctx.watch.jittered(wait))
    return json_response(request, answers.view())


def install(app: web.Application) -> None:
    """The page's files and the sampler (started and stopped with the application)."""
    ctx = app[CTX]
    app[FILES] = page_files()
    answers = app[SPLIT_ANSWERS] = SplitAnswers(lambda: ctx.handler.totals().splits)

    async def sampling(_app: web.Application):
        task = asyncio.create_task(answers.run())
        yield
        answers.close()
        task.cancel()

    app.cleanup_ctx.append(sampling)

