"""List-then-watch one resource kind with the official (synchronous) client, in a thread.

The thread owns the resourceVersion: it lists, watches from the list's
version, follows every event and BOOKMARK, relists when the server says 410
Gone (as an HTTP status or as an ERROR event), and reconnects after errors
with capped exponential backoff and jitter. Server-side `timeoutSeconds` ends
each watch. Bookmarks are requested, so even a quiet watch carries bytes
(the API server sends one about every minute); a watch that carries none for
the idle timeout is dead (a half-open connection, a server that stopped
sending): it is dropped and the kind is listed again, then watched anew.
Results reach the event loop only through `post` (call_soon_threadsafe).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import ReadTimeoutError

from ..backoff import Backoff

log = logging.getLogger("meshdns.sources.kubernetes")

LIST_PAGE = 500


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str          # our name for it: "services", "endpointslices", "nodes"
    api: str           # client API class
    list_method: str   # cluster-wide list/watch method of that class


SERVICES = Resource("services", "CoreV1Api", "list_service_for_all_namespaces")
ENDPOINTSLICES = Resource("endpointslices", "DiscoveryV1Api", "list_endpoint_slice_for_all_namespaces")
NODES = Resource("nodes", "CoreV1Api", "list_node")


class Sink(Protocol):
    """Called on the event loop, in the order the thread saw things."""

    def listed(self, kind: str, items: list[dict], received: float) -> None: ...
    def event(self, kind: str, etype: str, obj: dict, received: float) -> None: ...
    def bookmark(self, kind: str, received: float) -> None: ...
    def watch_started(self, kind: str) -> None: ...
    def failed(self, kind: str, message: str, *, gone: bool) -> None: ...


class Gone(Exception):
    """410: the resourceVersion is too old; list again."""


class Silent(Exception):
    """The watch stream carried no bytes for the idle timeout: presumed dead; list again."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    watch: float      # server-side timeoutSeconds of one watch request
    request: float    # client-side connect/read timeout of every request
    idle: float       # a watch with no bytes this long is dead (watch_idle_timeout)

    @property
    def watch_seconds(self) -> int:
        return max(1, int(round(self.watch)))

    @property
    def watch_read(self) -> float:
        """How long a watch may go without a byte: the idle timeout, or less when the server's own end is due."""
        return min(self.idle, self.watch_seconds + self.request)


class Watcher:
    def __init__(self, resource: Resource, api_client: Any, *, sink: Sink,
                 post: Callable[..., None], timeouts: Timeouts, backoff: Backoff,
                 stop: threading.Event, label: str):
        self.resource = resource
        self._list_fn = getattr(getattr(client, resource.api)(api_client), resource.list_method)
        self.sink = sink
        self._post = post
        self.timeouts = timeouts
        self.backoff = backoff
        self._stop = stop
        self.label = label
        self.resource_version: str | None = None
        self.since_list = 0  # events since the last list
        self._resp: Any = None
        self._thread = threading.Thread(target=self._main, name=f"meshdns-watch-{label}-{resource.kind}",
                                        daemon=True)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def interrupt(self) -> None:
        """Unblock a read in progress (the stop flag is already set)."""
        resp = self._resp
        conn = getattr(resp, "connection", None) if resp is not None else None
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the loop (in the thread) --------------------------------------------

    def _main(self) -> None:
        kind = self.resource.kind
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    items, self.resource_version = self._list()
                    self._emit(self.sink.listed, kind, items, time.monotonic())
                    self.backoff.reset()
                    self.since_list = 0
                started = time.monotonic()
                if not self._watch() and time.monotonic() - started < self.timeouts.watch_seconds / 2:
                    # the server keeps ending watches at once: do not spin
                    self._stop.wait(self.backoff.next())
            except Gone:
                self.resource_version = None
                self._emit_failed("410 Gone: resourceVersion too old, listing again", gone=True)
                if self.since_list == 0:  # 410 right after a list: the server is confused, do not spin
                    self._stop.wait(self.backoff.next())
            except Silent:
                if self._stop.is_set():
                    break
                self.resource_version = None   # what the dead stream missed is in the next list
                self._emit_failed(f"read timed out: no bytes on the watch for {self.timeouts.watch_read:g}s, "
                                  "presumed dead; listing again", gone=False)
            except Exception as exc:  # any failure: keep the last state, back off, try again
                if self._stop.is_set():
                    break
                self._emit_failed(_describe(exc), gone=False)
                self._stop.wait(self.backoff.next())

    def _emit(self, fn: Callable, *args: Any) -> None:
        try:
            self._post(fn, *args)
        except RuntimeError:  # the loop is gone: the app has stopped
            self._stop.set()

    def _emit_failed(self, message: str, *, gone: bool) -> None:
        try:
            self._post(lambda: self.sink.failed(self.resource.kind, message, gone=gone))
        except RuntimeError:
            self._stop.set()

    def _request_timeout(self, read: float) -> tuple[float, float]:
        return (self.timeouts.request, read)

    def _call(self, **kwargs: Any) -> Any:
        try:
            return self._list_fn(_preload_content=False, **kwargs)
        except ApiException as exc:
            if exc.status == 410:
                raise Gone() from None
            raise

    def _list(self) -> tuple[list[dict], str]:
        """All objects, paged; returns them with the list's resourceVersion."""
        items: list[dict] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE,
                                      "_request_timeout": self._request_timeout(self.timeouts.request)}
            if token:
                kwargs["_continue"] = token
            resp = self._call(**kwargs)
            self._resp = resp
            try:
                body = json.loads(resp.data)
            finally:
                self._resp = None
                resp.release_conn()
            items.extend(_slim(obj) for obj in body.get("items") or ())
            meta = body.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def _watch(self) -> int:
        """One watch request; returns how many events it delivered."""
        kind = self.resource.kind
        seconds = self.timeouts.watch_seconds
        resp = self._call(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                          timeout_seconds=seconds, _request_timeout=self._request_timeout(self.timeouts.watch_read))
        self._resp = resp
        count = 0
        try:
            if self._stop.is_set():  # stopped while connecting: interrupt() could not see this response
                return count
            self._emit(self.sink.watch_started, kind)
            for line in _lines(resp):
                if self._stop.is_set():
                    break
                if not line.strip():
                    continue
                event = json.loads(line)
                etype = event.get("type")
                obj = event.get("object") or {}
                received = time.monotonic()
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise ApiException(status=obj.get("code") or 500,
                                       reason=f"{obj.get('reason')}: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if etype == "BOOKMARK":
                    self._emit(self.sink.bookmark, kind, received)
                elif etype in ("ADDED", "MODIFIED", "DELETED"):
                    self._emit(self.sink.event, kind, etype, _slim(obj), received)
                else:
                    continue
                if rv:
                    self.resource_version = str(rv)
                count += 1
                self.since_list += 1
                self.backoff.reset()
        finally:
            self._resp = None
            resp.close()  # a watch body is never reused: do not return a half-read connection
            resp.release_conn()
        return count


def _lines(resp: Any):
    """The stream's lines; a read that times out (no byte for the read timeout) raises Silent."""
    try:
        yield from iter_resp_lines(resp)
    except (ReadTimeoutError, TimeoutError):
        raise Silent() from None


_BULKY_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def _slim(obj: dict) -> dict:
    """Drop what is large and never read (managedFields, last-applied copies) before it is kept."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        ann = meta.get("annotations")
        if ann:
            for key in _BULKY_ANNOTATIONS:
                ann.pop(key, None)
    return obj


def _describe(exc: BaseException) -> str:
    """A one-line reason for logs and /readyz (urllib3 wraps the useful part in `reason`)."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".strip()
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        exc = reason
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."
