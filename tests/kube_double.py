"""A Kubernetes API server double that speaks the real wire format, on 127.0.0.1 port 0.

It serves what meshdns uses: list and `?watch=1` for Services, EndpointSlices
(discovery.k8s.io/v1) and Nodes, cluster-wide and per namespace, with
resourceVersion, timeoutSeconds, allowWatchBookmarks, labelSelector; chunked
JSON event streams (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR); 410 Gone for a
compacted resourceVersion (as an ERROR event like a real API server, or as an
HTTP status); and GET/POST/PUT/DELETE of namespaced Services and
EndpointSlices. Objects get what the API server adds: uid, resourceVersion,
creationTimestamp, a clusterIP, nodePorts, defaulted ports.

Test controls (callable from any thread): apply/delete objects, close every
open stream, compact history, go down (refuse connections) and come back,
freeze (accept but never answer, a silent partition), mute the open watch
streams (they stay connected and send nothing more, a half-open connection,
while new requests are answered).
"""
from __future__ import annotations

import asyncio
import copy
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

TOKEN = "meshdns-double-token"


@dataclass(frozen=True)
class Kind:
    plural: str
    kind: str
    api_version: str
    prefix: str          # "api/v1" or "apis/discovery.k8s.io/v1"
    namespaced: bool

    @property
    def list_kind(self) -> str:
        return self.kind + "List"


KINDS = {
    "services": Kind("services", "Service", "v1", "api/v1", True),
    "endpointslices": Kind("endpointslices", "EndpointSlice", "discovery.k8s.io/v1", "apis/discovery.k8s.io/v1", True),
    "nodes": Kind("nodes", "Node", "v1", "api/v1", False),
}
_CLOSE = object()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, **details: Any) -> dict:
    """A metav1.Status as the API server sends it for failures."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def _matches(selector: dict[str, str], obj: dict) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _parse_selector(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        out[key.strip()] = value.lstrip("=").strip()
    return out


@dataclass(eq=False)
class _Stream:
    kind: str
    namespace: str | None
    selector: dict[str, str]
    bookmarks: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    muted: bool = False   # connected, but not a byte more (not even its end at timeoutSeconds)


class KubeDouble:
    def __init__(self, *, token: str = TOKEN, bookmark_interval: float | None = None,
                 rbac: Path | None = None):
        self.token = token
        self.rbac = _load_rbac(rbac) if rbac is not None else None   # enforce these rules (403 otherwise)
        self.denied: list[tuple[str, str, str, str]] = []             # (verb, group, resource, namespace)
        self.bookmark_interval = bookmark_interval
        self.gone_as_status = False          # 410 on a too-old watch as HTTP status instead of an ERROR event
        self.port = 0
        self.objects: dict[tuple[str, str, str], dict] = {}   # (plural, ns, name) -> object
        self.rv = 1000
        self.compacted = 0
        self.history: list[tuple[int, str, dict]] = []       # (rv, plural, event)
        self.requests: list[tuple[str, str]] = []            # (method, path?query)
        self.writes: list[tuple[str, str, str, str]] = []    # (method, plural, ns, name)
        self.watch_count = 0
        self.list_count = 0
        self._streams: set[_Stream] = set()
        self._ip = itertools.count(10)
        self._node_port = itertools.count(30080)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._runner: web.AppRunner | None = None
        self._thawed: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="kube-double", daemon=True)
        self._ready = threading.Event()

    # -- running -------------------------------------------------------------

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._start())
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    async def _start(self) -> None:
        self._thawed = asyncio.Event()
        self._thawed.set()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            self._runner.server, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> "KubeDouble":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("API server double did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or not self._thread.is_alive():
            return
        self.call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        self._end_streams()
        if self._server is not None:
            self._server.close()
        self._abort_connections()
        self._thawed.set()

    def call(self, fn: Callable, *args: Any) -> Any:
        """Run fn(*args) on the double's loop (where all its state lives) and return the result."""
        if threading.current_thread() is self._thread:  # inside atomically(): already there
            result = fn(*args)
            assert not asyncio.iscoroutine(result), "only plain controls inside atomically()"
            return result

        async def wrapper():
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, *, context: str = "double", namespace: str = "default") -> Path:
        """A kubeconfig (JSON is YAML) pointing the official client at this double with a bearer token."""
        doc = {"apiVersion": "v1", "kind": "Config", "preferences": {},
               "clusters": [{"name": context, "cluster": {"server": self.url}}],
               "users": [{"name": f"{context}-user", "user": {"token": self.token}}],
               "contexts": [{"name": context, "context": {"cluster": context, "user": f"{context}-user",
                                                          "namespace": namespace}}],
               "current-context": context}
        path.write_text(json.dumps(doc, indent=2))
        return path

    # -- test controls -----------------------------------------------------------

    def apply(self, obj: dict) -> dict:
        """Create or replace an object as a controller would (no resourceVersion check)."""
        return self.call(self._apply, copy.deepcopy(obj))

    def delete(self, plural: str, namespace: str, name: str) -> dict | None:
        return self.call(self._delete, plural, namespace, name)

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        return self.call(lambda: copy.deepcopy(self.objects.get((plural, namespace, name))))

    def list(self, plural: str, namespace: str | None = None) -> list[dict]:
        return self.call(lambda: [copy.deepcopy(o) for (p, ns, _), o in sorted(self.objects.items())
                                  if p == plural and (namespace is None or ns == namespace)])

    def atomically(self, fn: Callable[["KubeDouble"], Any]) -> Any:
        """Run several controls in one loop turn: no client request is served in between."""
        return self.call(fn, self)

    def close_streams(self) -> None:
        """End every open watch cleanly, as an API server does at its request timeout."""
        self.call(self._end_streams)

    def compact(self, *, notify: bool = True) -> None:
        """Forget history: any resourceVersion held by a client is now too old (410).

        notify: send the open watches an ERROR event with a 410 Status, as a real
        API server does when its watch cache can no longer serve them.
        """
        def run():
            self.rv += 1
            self.compacted = self.rv
            self.history.clear()
            if notify:
                for s in list(self._streams):
                    s.queue.put_nowait({"type": "ERROR", "object": self._gone_status(0)})
                    s.queue.put_nowait(_CLOSE)
        self.call(run)

    def go_down(self) -> None:
        """Stop listening and cut every connection: clients now get connection refused."""
        async def run():
            self._end_streams()
            self._server.close()
            self._abort_connections()
        self.call(run)

    def come_back(self) -> None:
        self.call(self._listen)

    def freeze(self) -> None:
        """Accept and read requests but never answer; open streams fall silent (a partition)."""
        self.call(lambda: self._thawed.clear())

    def thaw(self) -> None:
        self.call(lambda: self._thawed.set())

    def mute_streams(self) -> None:
        """The watch streams open now send nothing more, ever (events, bookmarks, their end); new requests,
        and the watches they open, are served as usual: a half-open connection, as after a NAT or
        load-balancer timeout."""
        def run():
            for s in self._streams:
                s.muted = True
        self.call(run)

    def bookmark(self) -> None:
        """Send a BOOKMARK now on every stream that allowed them."""
        def run():
            for s in self._streams:
                if s.bookmarks:
                    s.queue.put_nowait(self._bookmark_event(s.kind))
        self.call(run)

    def open_streams(self, plural: str | None = None) -> int:
        return self.call(lambda: sum(1 for s in self._streams if plural is None or s.kind == plural))

    # -- internals (on the loop) ---------------------------------------------------

    def _end_streams(self) -> None:
        for s in list(self._streams):
            s.queue.put_nowait(_CLOSE)

    def _abort_connections(self) -> None:
        for handler in self._runner.server.connections:
            transport = handler.transport
            if transport is not None:
                transport.abort()

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _gone_status(self, rv: int) -> dict:
        return status_object(410, "Expired", f"too old resource version: {rv} ({self.compacted})")

    def _bookmark_event(self, plural: str) -> dict:
        k = KINDS[plural]
        return {"type": "BOOKMARK", "object": {"kind": k.kind, "apiVersion": k.api_version,
                                               "metadata": {"resourceVersion": str(self.rv)}}}

    def _emit(self, plural: str, etype: str, obj: dict) -> None:
        event = {"type": etype, "object": obj}
        self.history.append((self.rv, plural, event))
        ns = (obj.get("metadata") or {}).get("namespace") or ""
        for s in self._streams:
            if s.kind == plural and (s.namespace is None or s.namespace == ns) and _matches(s.selector, obj):
                s.queue.put_nowait(event)

    def _defaults(self, plural: str, obj: dict, old: dict | None) -> dict:
        k = KINDS[plural]
        obj["kind"], obj["apiVersion"] = k.kind, k.api_version
        meta = obj.setdefault("metadata", {})
        if k.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        meta["creationTimestamp"] = old["metadata"]["creationTimestamp"] if old else _now()
        if plural == "endpointslices":
            meta["generation"] = (old["metadata"].get("generation", 0) if old else 0) + 1
            obj.setdefault("endpoints", [])
        if plural == "services":
            self._service_defaults(obj, old)
        meta["resourceVersion"] = self._next_rv()
        return obj

    def _service_defaults(self, obj: dict, old: dict | None) -> None:
        spec = obj.setdefault("spec", {})
        old_spec = (old or {}).get("spec") or {}
        stype = spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for p in spec.get("ports") or ():
            p.setdefault("protocol", "TCP")
            if stype != "ExternalName":
                p.setdefault("targetPort", p.get("port"))
        if stype == "ExternalName":
            obj.setdefault("status", {"loadBalancer": {}})
            return
        # like patchAllocatedValues: an update that leaves allocated values empty keeps them
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
        if not spec.get("clusterIP"):
            n = next(self._ip)
            spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
        if spec["clusterIP"] != "None":
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
        else:
            spec.setdefault("clusterIPs", ["None"])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        if stype in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
            old_ports = {p.get("port"): p.get("nodePort") for p in old_spec.get("ports") or ()}
            for p in spec.get("ports") or ():
                if not p.get("nodePort"):
                    p["nodePort"] = old_ports.get(p.get("port")) or next(self._node_port)
        if stype == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        obj.setdefault("status", {"loadBalancer": {}})

    def _apply(self, obj: dict) -> dict:
        plural = _plural_of(obj)
        meta = obj.setdefault("metadata", {})
        key = (plural, meta.get("namespace", "default") if KINDS[plural].namespaced else "", meta.get("name", ""))
        old = self.objects.get(key)
        obj = self._defaults(plural, obj, old)
        key = (plural, key[1], meta["name"])
        self.objects[key] = obj
        self._emit(plural, "MODIFIED" if old else "ADDED", copy.deepcopy(obj))
        return copy.deepcopy(obj)

    def _delete(self, plural: str, namespace: str, name: str) -> dict | None:
        obj = self.objects.pop((plural, namespace if KINDS[plural].namespaced else "", name), None)
        if obj is None:
            return None
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(plural, "DELETED", obj)
        return obj

    # -- HTTP -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        await self._thawed.wait()
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _json(status_object(401, "Unauthorized", "Unauthorized"), 401)
        route = _route(request.path)
        if route is None:
            return _json(status_object(404, "NotFound", "the server could not find the requested resource"), 404)
        plural, namespace, name = route
        q = request.query
        verb = _verb(request.method, name, q)
        if self.rbac is not None and not _allowed(self.rbac, verb, plural, namespace):
            group = KINDS[plural].prefix.split("/")[1] if KINDS[plural].prefix.startswith("apis/") else ""
            self.denied.append((verb, group, plural, namespace or ""))
            return _json(status_object(403, "Forbidden", f'{plural} is forbidden: User "system:serviceaccount:'
                                       f'meshdns:meshdns" cannot {verb} resource "{plural}" in API group '
                                       f'"{group}"' + (f' in the namespace "{namespace}"' if namespace else
                                                       " at the cluster scope")), 403)
        if request.method == "GET" and name is None:
            if q.get("watch") in ("1", "true"):
                return await self._watch(request, plural, namespace)
            return self._list(plural, namespace, q)
        if request.method == "GET":
            obj = self.objects.get((plural, namespace or "", name))
            if obj is None:
                return _not_found(plural, name)
            return _json(obj)
        if not KINDS[plural].namespaced or namespace is None:
            return _json(status_object(405, "MethodNotAllowed", "the server does not allow this method"), 405)
        try:
            body = await request.json() if request.method in ("POST", "PUT") else None
        except ValueError:
            return _json(status_object(400, "BadRequest", "the body is not JSON"), 400)
        if request.method == "POST" and name is None:
            return self._create(plural, namespace, body)
        if request.method == "PUT" and name is not None:
            return self._replace(plural, namespace, name, body)
        if request.method == "DELETE" and name is not None:
            self.writes.append(("DELETE", plural, namespace, name))
            obj = self._delete(plural, namespace, name)
            return _json(obj) if obj is not None else _not_found(plural, name)
        return _json(status_object(405, "MethodNotAllowed", "the server does not allow this method"), 405)

    def _list(self, plural: str, namespace: str | None, q) -> web.Response:
        self.list_count += 1
        rv = q.get("resourceVersion", "")
        if rv not in ("", "0") and q.get("resourceVersionMatch") == "Exact" and int(rv) < self.compacted:
            return _json(self._gone_status(int(rv)), 410)
        selector = _parse_selector(q.get("labelSelector", ""))
        items = []
        for (p, ns, _), obj in sorted(self.objects.items()):
            if p == plural and (namespace is None or ns == namespace) and _matches(selector, obj):
                item = copy.deepcopy(obj)
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        k = KINDS[plural]
        return _json({"kind": k.list_kind, "apiVersion": k.api_version,
                      "metadata": {"resourceVersion": str(self.rv)}, "items": items})

    async def _watch(self, request: web.Request, plural: str, namespace: str | None) -> web.StreamResponse:
        self.watch_count += 1
        q = request.query
        rv = q.get("resourceVersion", "")
        timeout = float(q.get("timeoutSeconds") or 1800)
        if rv not in ("", "0") and int(rv) < self.compacted and self.gone_as_status:
            return _json(self._gone_status(int(rv)), 410)
        stream = _Stream(plural, namespace, _parse_selector(q.get("labelSelector", "")),
                         q.get("allowWatchBookmarks") in ("1", "true"))
        if rv not in ("", "0") and int(rv) < self.compacted:
            stream.queue.put_nowait({"type": "ERROR", "object": self._gone_status(int(rv))})
            stream.queue.put_nowait(_CLOSE)
        elif rv in ("", "0"):  # "any": synthetic ADDED for the current state
            for (p, ns, _), obj in sorted(self.objects.items()):
                if p == plural and (namespace is None or ns == namespace) and _matches(stream.selector, obj):
                    stream.queue.put_nowait({"type": "ADDED", "object": copy.deepcopy(obj)})
        else:
            since = int(rv)
            for event_rv, p, event in self.history:
                obj = event["object"]
                ns = obj["metadata"].get("namespace") or ""
                if event_rv > since and p == plural and (namespace is None or ns == namespace) \
                        and _matches(stream.selector, obj):
                    stream.queue.put_nowait(event)
        self._streams.add(stream)  # no await since the history replay: nothing can slip between
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await resp.prepare(request)
            while True:
                remaining = deadline - loop.time()
                if stream.muted:
                    if await stream.queue.get() is _CLOSE:   # only the end of the test ends it
                        break
                    continue
                if remaining <= 0:
                    break
                wait = remaining if not (stream.bookmarks and self.bookmark_interval) \
                    else min(remaining, self.bookmark_interval)
                try:
                    item = await asyncio.wait_for(stream.queue.get(), wait)
                except asyncio.TimeoutError:
                    if stream.bookmarks and self.bookmark_interval and deadline - loop.time() > 0:
                        item = self._bookmark_event(plural)
                    else:
                        continue
                if item is _CLOSE:
                    break
                if stream.muted:
                    continue
                await self._thawed.wait()
                await resp.write(json.dumps(item).encode() + b"\n")
            await self._thawed.wait()   # frozen: not even the end of the stream gets through
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(stream)
        return resp

    def _create(self, plural: str, namespace: str, body: dict) -> web.Response:
        meta = body.setdefault("metadata", {})
        meta["namespace"] = namespace
        name = meta.get("name")
        self.writes.append(("POST", plural, namespace, name or ""))
        if name and (plural, namespace, name) in self.objects:
            return _json(status_object(409, "AlreadyExists", f'{plural} "{name}" already exists',
                                       name=name, kind=plural), 409)
        meta.pop("resourceVersion", None)
        return _json(self._apply(body), 201)

    def _replace(self, plural: str, namespace: str, name: str, body: dict) -> web.Response:
        self.writes.append(("PUT", plural, namespace, name))
        old = self.objects.get((plural, namespace, name))
        if old is None:
            return _not_found(plural, name)
        meta = body.setdefault("metadata", {})
        if meta.get("name", name) != name:
            return _json(status_object(400, "BadRequest", "the name of the object does not match the URL"), 400)
        rv = meta.get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            return _json(status_object(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": '
                                       "the object has been modified; please apply your changes to the latest "
                                       "version and try again", name=name, kind=plural), 409)
        meta["name"], meta["namespace"] = name, namespace
        return _json(self._apply(body), 200)

    # -- context manager -------------------------------------------------------

    def __enter__(self) -> "KubeDouble":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def _not_found(plural: str, name: str) -> web.Response:
    return _json(status_object(404, "NotFound", f'{plural} "{name}" not found', name=name, kind=plural), 404)


def _verb(method: str, name: str | None, q) -> str:
    if method == "GET":
        if name is not None:
            return "get"
        return "watch" if q.get("watch") in ("1", "true") else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


def _load_rbac(path: Path) -> list[tuple[str | None, dict]]:
    """(namespace or None for a ClusterRole, rule) for every rule of the Roles/ClusterRoles in a manifest."""
    import yaml
    rules = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") in ("ClusterRole", "Role"):
            ns = doc["metadata"].get("namespace") if doc["kind"] == "Role" else None
            rules.extend((ns, rule) for rule in doc.get("rules") or ())
    return rules


def _allowed(rules, verb: str, plural: str, namespace: str | None) -> bool:
    prefix = KINDS[plural].prefix
    group = prefix.split("/")[1] if prefix.startswith("apis/") else ""
    for ns, rule in rules:
        if ns is not None and ns != namespace:
            continue
        if group in rule.get("apiGroups", ()) and plural in rule.get("resources", ()) \
                and verb in rule.get("verbs", ()):
            return True
    return False


def _plural_of(obj: dict) -> str:
    for plural, k in KINDS.items():
        if k.kind == obj.get("kind"):
            return plural
    raise ValueError(f"unknown kind {obj.get('kind')!r}")


def _route(path: str) -> tuple[str, str | None, str | None] | None:
    """/api/v1/[namespaces/NS/]PLURAL[/NAME] and /apis/discovery.k8s.io/v1/... -> (plural, ns, name)."""
    parts = [p for p in path.split("/") if p]
    for plural, k in KINDS.items():
        prefix = k.prefix.split("/")
        if parts[:len(prefix)] != prefix:
            continue
        rest = parts[len(prefix):]
        if rest[:1] == ["namespaces"] and len(rest) >= 3 and rest[2] == plural and k.namespaced:
            if len(rest) in (3, 4):
                return plural, rest[1], rest[3] if len(rest) == 4 else None
        elif rest[:1] == [plural] and len(rest) in (1, 2):
            if len(rest) == 2 and k.namespaced:
                return None
            return plural, None, rest[1] if len(rest) == 2 else None
    return None


# -- real object shapes ---------------------------------------------------------------
# What `kubectl get -o json` shows for objects made by kubectl and the controllers.


def service(name: str, namespace: str = "default", *, type: str = "ClusterIP",
            ports: list[dict] | None = None, annotations: dict | None = None, labels: dict | None = None,
            cluster_ip: str | None = None, external_name: str | None = None, selector: dict | None = None,
            publish_not_ready: bool = False, lb_ingress: list[dict] | None = None,
            external_traffic_policy: str | None = None) -> dict:
    spec: dict[str, Any] = {"type": type,
                            "ports": ports if ports is not None else [{"name": "http", "port": 80,
                                                                       "targetPort": 8080, "protocol": "TCP"}]}
    if type != "ExternalName":
        spec["selector"] = selector if selector is not None else {"app": name}
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    if external_name is not None:
        spec["externalName"] = external_name
    if publish_not_ready:
        spec["publishNotReadyAddresses"] = True
    if external_traffic_policy:
        spec["externalTrafficPolicy"] = external_traffic_policy
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {"app": name}}
    if annotations:
        meta["annotations"] = annotations
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
    if lb_ingress is not None:
        svc["status"] = {"loadBalancer": {"ingress": lb_ingress}}
    return svc


def endpoint_slice(service_name: str, namespace: str = "default", *, endpoints: list[tuple] = (),
                   ports: list[dict] | None = None, address_type: str = "IPv4", name: str | None = None,
                   service_uid: str | None = None) -> dict:
    """endpoints: (address, ready[, nodeName[, zone]]) tuples; pods named like a Deployment's."""
    eps = []
    for i, ep in enumerate(endpoints):
        address, ready = ep[0], ep[1]
        node = ep[2] if len(ep) > 2 else "kind-worker"
        eps.append({"addresses": [address],
                    "conditions": {"ready": ready, "serving": ready, "terminating": False},
                    "nodeName": node,
                    "targetRef": {"kind": "Pod", "namespace": namespace,
                                  "name": f"{service_name}-7d9c6f8b5d-{i:05x}",
                                  "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{service_name}/{address}"))}})
        if len(ep) > 3 and ep[3]:
            eps[-1]["zone"] = ep[3]   # the EndpointSlice controller copies the node's zone label here
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": address_type,
        "metadata": {
            "name": name or f"{service_name}-{uuid.uuid5(uuid.NAMESPACE_DNS, service_name).hex[:5]}",
            "namespace": namespace,
            "generateName": f"{service_name}-",
            "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                       "kubernetes.io/service-name": service_name},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": _now()},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service_name,
                                 "uid": service_uid or str(uuid.uuid5(uuid.NAMESPACE_OID, service_name)),
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "endpoints": eps,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def node(name: str, internal_ip: str | None, *, external_ip: str | None = None, ready: bool = True,
         zone: str | None = None) -> dict:
    addresses = [{"type": "InternalIP", "address": internal_ip}] if internal_ip else []
    if external_ip:
        addresses.append({"type": "ExternalIP", "address": external_ip})
    addresses.append({"type": "Hostname", "address": name})
    now = _now()
    labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if zone:  # as cloud providers label nodes
        labels.update({"topology.kubernetes.io/region": zone[:-1], "topology.kubernetes.io/zone": zone})
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                     "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": f"kind://docker/kind/{name}"},
        "status": {
            "addresses": addresses,
            "allocatable": {"cpu": "8", "ephemeral-storage": "102625208Ki", "memory": "16283092Ki", "pods": "110"},
            "capacity": {"cpu": "8", "ephemeral-storage": "102625208Ki", "memory": "16283092Ki", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                 "message": "kubelet has sufficient memory available", "lastHeartbeatTime": now,
                 "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
                 "message": "kubelet has no disk pressure", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
                 "message": "kubelet has sufficient PID available", "lastHeartbeatTime": now,
                 "lastTransitionTime": now},
                {"type": "Ready", "status": "True" if ready else "False",
                 "reason": "KubeletReady" if ready else "KubeletNotReady",
                 "message": "kubelet is posting ready status" if ready else "container runtime network not ready",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"architecture": "amd64", "bootID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                         "containerRuntimeVersion": "containerd://1.7.13", "kernelVersion": "6.1.0-18-amd64",
                         "kubeProxyVersion": "v1.29.2", "kubeletVersion": "v1.29.2",
                         "machineID": uuid.uuid5(uuid.NAMESPACE_X500, name).hex,
                         "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12 (bookworm)",
                         "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_X500, name))},
        },
    }


def eventually(check: Callable[[], Any], *, timeout: float = 5.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll until check() is truthy (harness.wait_until with this module's shorter default)."""
    from harness import wait_until
    return wait_until(check, timeout, interval, what=what)
