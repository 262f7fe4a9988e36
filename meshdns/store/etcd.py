"""The etcd v3 backend, on the gRPC stubs that aetcd ships.

aetcd's client covers one endpoint, no TLS, no paginated range and no
request metadata, so this backend opens its own gRPC channel and calls
aetcd's generated stubs directly:
- several endpoints become one multi-address target balanced round robin
  (a dead member is skipped, a restarted one is found again within
  `max_reconnect_backoff`);
- HTTP/2 keepalive pings during calls unmask a hung member (a SIGSTOPped
  process keeps its sockets open); `keepalive_time` stays above the server's
  --grpc-keepalive-min-time (5 s by default) or the server hangs up;
- `hasleader` metadata makes a member that lost its leader refuse requests
  and end watches instead of holding them;
- a list is paged at one revision, the page halved when a reply would pass
  gRPC's 4 MiB receive limit;
- every call has a deadline of `timeout`: an unreachable or quorum-less
  cluster raises StoreUnavailable instead of hanging.
"""
from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from .kv import (DELETE, PUT, Batch, Compacted, Compare, Delete, Event, InvalidRequest, KeyValue, Op, Put,
                 StoreError, StoreUnavailable, prefix_end)

log = logging.getLogger("meshdns.store.etcd")

_TARGETS = {"value": rpc.Compare.VALUE, "version": rpc.Compare.VERSION, "create": rpc.Compare.CREATE,
            "mod": rpc.Compare.MOD, "lease": rpc.Compare.LEASE}
_RESULTS = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS, ">": rpc.Compare.GREATER}
_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                grpc.StatusCode.ABORTED}


class _TooLarge(StoreError):
    """A reply bigger than the client's receive limit."""


def grpc_target(endpoints: Sequence[str]) -> tuple[str, bool]:
    """One gRPC target for every endpoint, and whether it speaks TLS.

    IP endpoints become `ipv4:a:p,b:p` (or ipv6); one host name becomes
    `dns:///name:port`, which gRPC resolves to every address it has.
    """
    if not endpoints:
        raise ValueError("endpoints: at least one etcd endpoint is needed")
    schemes, hosts = set(), []
    for endpoint in endpoints:
        url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"endpoints: {endpoint!r} is not http(s)://host:port")
        schemes.add(url.scheme)
        hosts.append((url.hostname, url.port or 2379))
    if len(schemes) > 1:
        raise ValueError("endpoints: mix http:// and https://")
    families = {_ip_family(host) for host, _ in hosts}
    if families == {4}:
        target = "ipv4:" + ",".join(f"{h}:{p}" for h, p in hosts)
    elif families == {6}:
        target = "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in hosts)
    elif len(hosts) == 1:
        target = f"dns:///{hosts[0][0]}:{hosts[0][1]}"
    else:
        raise ValueError("endpoints: several host names (or IPv4 mixed with IPv6) cannot share one connection;"
                         " give IP addresses, or one name that resolves to every member")
    return target, schemes == {"https"}


def _ip_family(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _read(name: str, path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path}: {exc.strerror}") from exc


class EtcdKV:
    backend = "etcd"

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, keepalive_time: float = 6.0, keepalive_timeout: float = 2.0,
                 max_reconnect_backoff: float = 1.0, page_size: int = 1000):
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._target, tls = grpc_target(self.endpoints)
        if bool(username) != bool(password):
            raise ValueError("username and password: give both or neither")
        if bool(cert_file) != bool(key_file):
            raise ValueError("cert_file and key_file: give both or neither")
        self._username, self._password = username, password
        self._credentials = None
        if tls or ca_file or cert_file:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read("ca_file", ca_file), private_key=_read("key_file", key_file),
                certificate_chain=_read("cert_file", cert_file))
        self._options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(max_reconnect_backoff * 1000)),
        ]
        self._page_size = page_size
        self._channel: grpc.aio.Channel | None = None
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"etcd {','.join(self.endpoints)}"

    # -- plumbing ---------------------------------------------------------------

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self._target, self._credentials, options=self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
            self.kv = rpc.KVStub(self._channel)
            self.leases = rpc.LeaseStub(self._channel)
            self.watches = rpc.WatchStub(self._channel)
        return self._channel

    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        self._open()
        metadata = (("hasleader", "true"),)
        if self._username is None:
            return metadata
        async with self._auth_lock:
            if self._token is None:
                reply = await self._call(rpc.AuthStub(self._channel).Authenticate,
                                         rpc.AuthenticateRequest(name=self._username, password=self._password),
                                         metadata=metadata)
                self._token = reply.token
        return metadata + (("token", self._token),)

    async def _call(self, method, request, *, metadata=None):
        try:
            return await method(request, timeout=self.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc

    async def _request(self, stub: str, name: str, request):
        """A unary call with a deadline; a stale auth token is renewed once."""
        for attempt in (1, 2):
            metadata = await self._metadata()
            try:
                return await self._call(getattr(getattr(self, stub), name), request, metadata=metadata)
            except _Unauthenticated:
                if attempt == 2 or self._username is None:
                    raise
                self._token = None

    def _error(self, exc: grpc.aio.AioRpcError) -> StoreError:
        code, details = exc.code(), exc.details() or ""
        where = f"{self}: {details or code.name}"
        if code in _UNAVAILABLE:
            return StoreUnavailable(where)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return _TooLarge(where) if "larger than max" in details else StoreUnavailable(where)
        if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
            return Compacted(0)
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE,
                    grpc.StatusCode.FAILED_PRECONDITION):
            return InvalidRequest(where)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return _Unauthenticated(where)
        return StoreError(where)

    # -- KV -----------------------------------------------------------------------

    async def list(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        end, key, revision, limit = prefix_end(prefix), prefix, 0, self._page_size
        out: list[KeyValue] = []
        while True:
            request = rpc.RangeRequest(key=key, range_end=end, limit=limit, revision=revision)
            try:
                reply = await self._request("kv", "Range", request)
            except _TooLarge:
                if limit == 1:
                    raise
                limit = max(1, limit // 2)
                continue
            except Compacted:  # the first page's revision went while paging: start again
                if not revision:
                    raise
                key, revision, out = prefix, 0, []
                continue
            revision = revision or reply.header.revision
            out.extend(_kv(kv) for kv in reply.kvs)
            if not reply.more or not reply.kvs:
                return out, revision
            key = reply.kvs[-1].key + b"\0"

    async def watch(self, prefix: bytes, start_revision: int) -> "_EtcdWatch":
        watch = _EtcdWatch(self, prefix, start_revision)
        await watch.start()
        return watch

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> tuple[bool, int]:
        request = rpc.TxnRequest(compare=[_compare(c) for c in compare], success=[_op(op) for op in success],
                                 failure=[_op(op) for op in failure])
        reply = await self._request("kv", "Txn", request)
        return reply.succeeded, reply.header.revision

    async def grant(self, ttl: int) -> int:
        reply = await self._request("leases", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl))
        if reply.error:
            raise InvalidRequest(f"{self}: {reply.error}")
        return reply.ID

    async def keepalive(self, lease: int) -> int:
        metadata = await self._metadata()
        try:
            async for reply in self.leases.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
                                                          timeout=self.timeout, metadata=metadata):
                return max(reply.TTL, 0)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        raise StoreUnavailable(f"{self}: lease keepalive got no answer")

    async def revoke(self, lease: int) -> None:
        try:
            await self._request("leases", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease))
        except InvalidRequest:  # not found: already expired or revoked
            pass

    async def compact(self, revision: int) -> None:
        await self._request("kv", "Compact", rpc.CompactionRequest(revision=revision))

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


class _Unauthenticated(StoreError):
    """The token or the credentials were refused."""


def _kv(kv) -> KeyValue:
    return KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _compare(c: Compare):
    message = rpc.Compare(key=c.key, target=_TARGETS[c.target], result=_RESULTS[c.result])
    if c.target == "value":
        message.value = c.value
    elif c.target == "version":
        message.version = c.value
    elif c.target == "create":
        message.create_revision = c.value
    elif c.target == "mod":
        message.mod_revision = c.value
    else:
        message.lease = c.value
    return message


def _op(op: Op):
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key, value=op.value, lease=op.lease))
    if isinstance(op, Delete):
        end = prefix_end(op.key) if op.prefix else b""
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key, range_end=end))
    raise TypeError(f"not a store operation: {op!r}")


class _EtcdWatch:
    """One gRPC watch stream; a response carrying several revisions is split into one batch each."""

    def __init__(self, kv: EtcdKV, prefix: bytes, start_revision: int):
        self._kv = kv
        self._create = rpc.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix),
                                              start_revision=max(start_revision, 0))
        self._call = None
        self._pending: collections.deque[Batch] = collections.deque()

    async def start(self) -> None:
        metadata = await self._kv._metadata()
        self._call = self._kv.watches.Watch(metadata=metadata)
        try:
            await asyncio.wait_for(self._call.write(rpc.WatchRequest(create_request=self._create)), self._kv.timeout)
            reply = await asyncio.wait_for(self._next_reply(), self._kv.timeout)
        except grpc.aio.AioRpcError as exc:
            await self.aclose()
            raise self._kv._error(exc) from exc
        except asyncio.TimeoutError:
            await self.aclose()
            raise StoreUnavailable(f"{self._kv}: watch not created within {self._kv.timeout} s") from None
        except BaseException:
            await self.aclose()
            raise
        if not reply.created:
            await self.aclose()
            raise StoreError(f"{self._kv}: unexpected first watch reply")
        self._queue(reply)

    async def _next_reply(self):
        try:
            reply = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._kv._error(exc) from exc
        if reply is grpc.aio.EOF:
            raise StoreUnavailable(f"{self._kv}: watch stream ended")
        if reply.compact_revision:
            raise Compacted(reply.compact_revision)
        if reply.canceled:
            raise StoreUnavailable(f"{self._kv}: watch canceled: {reply.cancel_reason or 'no reason given'}")
        return reply

    def _queue(self, reply) -> None:
        events: list[Event] = []
        for i, e in enumerate(reply.events):
            events.append(Event(DELETE, KeyValue(e.kv.key, b"", 0, e.kv.mod_revision, 0))
                          if e.type == rpc.Event.DELETE else Event(PUT, _kv(e.kv)))
            if i + 1 == len(reply.events) or reply.events[i + 1].kv.mod_revision != e.kv.mod_revision:
                self._pending.append(Batch(e.kv.mod_revision, tuple(events)))
                events = []

    def __aiter__(self) -> "_EtcdWatch":
        return self

    async def __anext__(self) -> Batch:
        while not self._pending:
            if self._call is None:
                raise StopAsyncIteration
            try:
                self._queue(await self._next_reply())
            except BaseException:
                await self.aclose()
                raise
        return self._pending.popleft()

    async def aclose(self) -> None:
        if self._call is not None:
            call, self._call = self._call, None
            call.cancel()
