"""Thin asyncio protocols: move bytes between sockets and the DnsHandler."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from time import perf_counter

from .handler import DnsHandler

log = logging.getLogger("meshdns.dns.server")


class UdpReader:
    """Reads the UDP socket directly when it is readable, a batch at a time.

    A DatagramProtocol costs a transport object and a callback per packet; for
    answers that take microseconds that overhead dominates, so the socket is
    drained in a loop and answered with plain sendto. A reply the kernel cannot
    take right now (EAGAIN) is dropped: the client retries, as with any UDP loss.

    Under steady load the socket is polled for up to `busy_poll` seconds after
    it runs dry instead of going back to sleep: sleeping and being woken for
    every few packets costs more than the packets (an interrupt and a context
    switch each, and on virtual machines a halted vCPU to wake), and that cost
    is what made the latency tail at moderate load. Polling starts only when
    packets arrive closer together than `busy_poll`, so an idle or lightly
    loaded server sleeps as before; each poll is bounded by `busy_poll`.
    """

    BATCH = 64  # packets per call, so TCP and the API get their turn

    def __init__(self, sock: socket.socket, handler: DnsHandler, pending: set, *, busy_poll: float = 0.0):
        self.sock = sock
        self.handler = handler
        self.pending = pending
        self.busy_poll = busy_poll
        self.closed = False
        self._last_end = float("-inf")

    def readable(self) -> None:
        recvfrom, sendto, handle = self.sock.recvfrom, self.sock.sendto, self.handler.handle
        poll = self.busy_poll
        if poll and perf_counter() - self._last_end >= poll:
            poll = 0.0  # traffic is sparse: the next packet would not come while we poll
        dry_since = 0.0
        handled = 0
        while handled < self.BATCH:
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                if not poll:
                    break
                now = perf_counter()
                if not dry_since:
                    dry_since = now
                elif now - dry_since >= poll:
                    break
                continue
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                log.debug("udp receive error: %s", exc)
                handled += 1
                continue
            dry_since = 0.0
            handled += 1
            reply = handle(data, addr, tcp=False)
            if reply is None:
                continue
            if isinstance(reply, bytes):
                try:
                    sendto(reply, addr)
                except OSError as exc:
                    log.debug("udp send to %s failed: %s", addr, exc)
                continue
            task = asyncio.ensure_future(reply)
            self.pending.add(task)
            task.add_done_callback(lambda t, addr=addr: self._sent(t, addr))
        self._last_end = perf_counter()

    def _sent(self, task: asyncio.Task, addr) -> None:
        self.pending.discard(task)
        if task.cancelled() or task.exception() is not None or self.closed:
            return
        reply = task.result()
        if reply is not None:
            try:
                self.sock.sendto(reply, addr)
            except OSError as exc:
                log.debug("udp send to %s failed: %s", addr, exc)


class TcpProtocol(asyncio.Protocol):
    """Length-prefixed queries, several per connection, closed when idle."""

    def __init__(self, server: "DnsServer"):
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = ("", 0)
        self.idle: asyncio.TimerHandle | None = None
        self.inflight = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername") or ("", 0)
        if len(self.server.connections) >= self.server.max_connections:
            transport.abort()
            return
        self.server.connections.add(self)
        self._arm()

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        if self.idle:
            self.idle.cancel()

    def _arm(self) -> None:
        if self.idle:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.server.idle_timeout, self._timeout)

    def _timeout(self) -> None:
        if self.inflight == 0 and self.transport is not None:
            self.transport.close()
        else:
            self._arm()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > 2 * 65537:  # a client that will not wait for answers
            self.transport.abort()
            return
        self._arm()
        while len(self.buffer) >= 2:
            (length,) = struct.unpack_from("!H", self.buffer)
            if len(self.buffer) < 2 + length:
                break
            packet = bytes(self.buffer[2:2 + length])
            del self.buffer[:2 + length]
            reply = self.server.handler.handle(packet, self.peer, tcp=True)
            if reply is None:
                continue
            if isinstance(reply, bytes):
                self._write(reply)
            else:
                self.inflight += 1
                task = asyncio.ensure_future(reply)
                self.server.pending.add(task)
                task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        self.server.pending.discard(task)
        self.inflight -= 1
        if not task.cancelled() and task.exception() is None and task.result() is not None:
            self._write(task.result())

    def _write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(struct.pack("!H", len(reply)) + reply)


class DnsServer:
    def __init__(self, handler: DnsHandler, *, idle_timeout: float = 10.0, max_connections: int = 1024,
                 busy_poll: float = 0.0):
        self.handler = handler
        self.busy_poll = busy_poll
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections: set[TcpProtocol] = set()
        self.pending: set[asyncio.Task] = set()
        self.udp: UdpReader | None = None
        self.tcp: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for attempt in range(20):
            try:
                udp_sock = _udp_socket(host, port, family, reuse_port)
            except OSError as exc:
                raise _cannot_listen(exc, host, port, "udp") from None
            bound = udp_sock.getsockname()[1]
            try:
                self.tcp = await loop.create_server(lambda: TcpProtocol(self), host=host, port=bound,
                                                    family=family, reuse_address=True,
                                                    reuse_port=reuse_port or None, backlog=1024)
            except OSError as exc:
                udp_sock.close()
                if port != 0 or attempt == 19:
                    raise _cannot_listen(exc, host, bound, "tcp") from None
                continue
            break
        self.udp = UdpReader(udp_sock, self.handler, self.pending, busy_poll=self.busy_poll)
        loop.add_reader(udp_sock.fileno(), self.udp.readable)
        self.port = bound

    async def close(self, *, drain: float = 2.0) -> None:
        """Stop accepting, let in-flight answers finish (bounded), then close connections."""
        if self.tcp is not None:
            self.tcp.close()
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=drain)
        deadline = asyncio.get_running_loop().time() + drain
        while any(c.inflight for c in self.connections) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self.udp is not None:
            asyncio.get_running_loop().remove_reader(self.udp.sock.fileno())
            self.udp.closed = True
            self.udp.sock.close()
        if self.tcp is not None:
            await self.tcp.wait_closed()


def _cannot_listen(exc: OSError, host: str, port: int, proto: str) -> OSError:
    """The same error, naming the address and port (the kernel's message names neither)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
    return OSError(exc.errno, f"cannot listen for DNS on {where} ({proto}): {reason}")


def _udp_socket(host: str, port: int, family: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
