"""The etcd v3 backend, on the gRPC stubs that aetcd ships.

aetcd's client covers one endpoint, no TLS, no paginated range and no
request metadata, so this backend opens its own gRPC channels and calls
aetcd's generated stubs directly:
- each endpoint gets a channel of its own, so TLS checks each member's
  certificate against that member's own address or name (see `_Member`);
  calls take the members in turn, connected ones first, and move on to the
  next member when one is down (a restarted one is found again within
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


def grpc_targets(endpoints: Sequence[str]) -> tuple[list[str], bool]:
    """One gRPC target per endpoint, and whether they speak TLS.

    An IP endpoint becomes `ipv4:a:p` (or ipv6); a host name becomes
    `dns:///name:port`, which gRPC resolves to every address it has (balanced
    round robin: each of them must hold a certificate for that name).
    """
    if not endpoints:
        raise ValueError("endpoints: at least one etcd endpoint is needed")
    schemes, targets = set(), []
    for endpoint in endpoints:
        url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"endpoints: {endpoint!r} is not http(s)://host:port")
        schemes.add(url.scheme)
        host, port = url.hostname, url.port or 2379
        family = _ip_family(host)
        targets.append(f"ipv4:{host}:{port}" if family == 4 else f"ipv6:[{host}]:{port}" if family == 6
                       else f"dns:///{host}:{port}")
    if len(schemes) > 1:
        raise ValueError("endpoints: mix http:// and https://")
    return targets, schemes == {"https"}


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


class _Member:
    """One endpoint and the channel of its own that reaches it.

    A TLS channel checks the server's certificate against one name, the
    channel's authority. gRPC Python cannot give each address of a channel a
    name of its own (gRPC Go can, per resolved address, and etcd's clientv3
    uses that), and a multi-address target's authority is the whole address
    list, which no member's certificate holds. So each endpoint gets its own
    channel, whose authority is that endpoint's host, and EtcdKV moves between
    members itself.
    """

    def __init__(self, endpoint: str, target: str, credentials, options: list):
        self.endpoint = endpoint
        if credentials is not None:
            self.channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        self.kv = rpc.KVStub(self.channel)
        self.leases = rpc.LeaseStub(self.channel)
        self.watches = rpc.WatchStub(self.channel)
        self.auth = rpc.AuthStub(self.channel)

    def state(self) -> grpc.ChannelConnectivity:
        """The channel's state; an idle channel starts connecting, so a restarted member is found again."""
        return self.channel.get_state(try_to_connect=True)


_READY, _FAILING = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE


class EtcdKV:
    backend = "etcd"

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, keepalive_time: float = 6.0, keepalive_timeout: float = 2.0,
                 max_reconnect_backoff: float = 1.0, page_size: int = 1000):
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._targets, tls = grpc_targets(self.endpoints)
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
            ("grpc.lb_policy_name", "round_robin"),  # over the addresses of one endpoint's name
            ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(max_reconnect_backoff * 1000)),
        ]
        self._page_size = page_size
        self._members: list[_Member] | None = None
        self._turn = 0
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"etcd {','.join(self.endpoints)}"

    # -- plumbing ---------------------------------------------------------------

    def _open(self) -> list[_Member]:
        """The members' channels, opened on first use (inside the event loop that uses them)."""
        if self._members is None:
            self._members = [_Member(endpoint, target, self._credentials, self._options)
                             for endpoint, target in zip(self.endpoints, self._targets)]
        return self._members

    async def _in_turn(self, deadline: float) -> list[tuple[_Member, grpc.ChannelConnectivity]]:
        """Every member with its state: connected ones first, then failing ones (a call fails at once
        there), then those still connecting; in turn within each.

        When none is connected, waits (until `deadline`) for one to connect or for every one to fail.
        """
        members = self._open()
        turn, self._turn = self._turn, (self._turn + 1) % len(members)
        members = members[turn:] + members[:turn]
        loop = asyncio.get_running_loop()
        while True:
            states = [m.state() for m in members]
            if _READY in states or all(s == _FAILING for s in states) or loop.time() >= deadline:
                break
            changes = [asyncio.ensure_future(m.channel.wait_for_state_change(s)) for m, s in zip(members, states)]
            try:
                await asyncio.wait(changes, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for change in changes:
                    change.cancel()
        return sorted(zip(members, states), key=lambda ms: (ms[1] != _READY, ms[1] != _FAILING))

    async def _on_a_member(self, call, *, idempotent: bool):
        """`await call(member, seconds_left)` on one member after another until one answers, within `timeout`.

        A call on a member whose channel is failing (gRPC has no connection to it) fails before it is sent,
        so it moves on to the next member. Once sent, only an idempotent call (a read, a keepalive) moves
        on after the member proved unavailable: a write's outcome is then unknown and StoreUnavailable says
        so, as etcd's own clients do.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        failures: list[StoreError] = []
        for member, state in await self._in_turn(deadline):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                return await call(member, left)
            except grpc.aio.AioRpcError as exc:
                error = self._error(exc, member)
                unsent = (state == _FAILING and exc.code() == grpc.StatusCode.UNAVAILABLE
                          and member.state() != _READY)  # (not connected in between either)
                if not isinstance(error, StoreUnavailable) or not (unsent or idempotent):
                    raise error from exc
                failures.append(error)
        if not failures:
            raise StoreUnavailable(f"{self}: no member connected within {self.timeout} s")
        raise StoreUnavailable("; ".join(str(f) for f in failures))

    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        metadata = (("hasleader", "true"),)
        if self._username is None:
            return metadata
        async with self._auth_lock:
            if self._token is None:
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                reply = await self._on_a_member(
                    lambda member, left: member.auth.Authenticate(request, timeout=left, metadata=metadata),
                    idempotent=True)
                self._token = reply.token
        return metadata + (("token", self._token),)

    async def _request(self, stub: str, name: str, request, *, idempotent: bool = False):
        """A unary call with a deadline; a stale auth token is renewed once."""
        for attempt in (1, 2):
            metadata = await self._metadata()
            try:
                return await self._on_a_member(
                    lambda member, left: getattr(getattr(member, stub), name)(request, timeout=left,
                                                                               metadata=metadata),
                    idempotent=idempotent)
            except _Unauthenticated:
                if attempt == 2 or self._username is None:
                    raise
                self._token = None

    def _error(self, exc: grpc.aio.AioRpcError, member: _Member) -> StoreError:
        code, details = exc.code(), exc.details() or ""
        where = f"etcd {member.endpoint}: {details or code.name}"
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
                reply = await self._request("kv", "Range", request, idempotent=True)
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

        async def once(member: _Member, left: float) -> int:
            async for reply in member.leases.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
                                                            timeout=left, metadata=metadata):
                return max(reply.TTL, 0)
            raise StoreUnavailable(f"etcd {member.endpoint}: lease keepalive got no answer")
        return await self._on_a_member(once, idempotent=True)

    async def revoke(self, lease: int) -> None:
        try:
            await self._request("leases", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease), idempotent=True)
        except InvalidRequest:  # not found: already expired or revoked
            pass

    async def compact(self, revision: int) -> None:
        await self._request("kv", "Compact", rpc.CompactionRequest(revision=revision))

    async def close(self) -> None:
        if self._members is not None:
            members, self._members = self._members, None
            for member in members:
                await member.channel.close()


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
    """One gRPC watch stream on one member; a response carrying several revisions is split into one batch each."""

    def __init__(self, kv: EtcdKV, prefix: bytes, start_revision: int):
        self._kv = kv
        self._create = rpc.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix),
                                              start_revision=max(start_revision, 0))
        self._call = None
        self._member: _Member | None = None
        self._pending: collections.deque[Batch] = collections.deque()
        self._requesting = False

    async def start(self) -> None:
        metadata = await self._kv._metadata()
        try:
            reply = self._checked(await self._kv._on_a_member(
                lambda member, left: self._create_on(member, left, metadata), idempotent=True))
        except BaseException:
            await self.aclose()
            raise
        if not reply.created:
            await self.aclose()
            raise StoreError(f"etcd {self._member.endpoint}: unexpected first watch reply")
        self._queue(reply)

    async def _create_on(self, member: _Member, left: float, metadata):
        """The stream on `member` and its first reply (a gRPC error is the caller's to judge)."""
        call = member.watches.Watch(metadata=metadata)
        try:
            await asyncio.wait_for(call.write(rpc.WatchRequest(create_request=self._create)), left)
            reply = await asyncio.wait_for(call.read(), left)
        except asyncio.TimeoutError:
            call.cancel()
            raise StoreUnavailable(f"etcd {member.endpoint}: watch not created within {self._kv.timeout} s") from None
        except BaseException:
            call.cancel()
            raise
        self._call, self._member = call, member
        return reply

    async def _next_reply(self):
        try:
            reply = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._kv._error(exc, self._member) from exc
        return self._checked(reply)

    def _checked(self, reply):
        if reply is grpc.aio.EOF:
            raise StoreUnavailable(f"etcd {self._member.endpoint}: watch stream ended")
        if reply.compact_revision:
            raise Compacted(reply.compact_revision)
        if reply.canceled:
            raise StoreUnavailable(f"etcd {self._member.endpoint}: watch canceled: "
                                   f"{reply.cancel_reason or 'no reason given'}")
        return reply

    async def request_progress(self) -> None:
        """One request at a time on the stream (concurrent writes break it); a caller that finds one on its
        way returns: the answer to that one, or to its own next try, will do."""
        if self._call is None or self._requesting:
            return
        self._requesting = True
        try:
            await self._call.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            raise StoreUnavailable(f"{self._kv}: progress request failed: {exc}") from None
        finally:
            self._requesting = False

    def _queue(self, reply) -> None:
        if not reply.events and not reply.created:   # a progress notification: current up to its revision
            self._pending.append(Batch(reply.header.revision, ()))
            return
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
