"""Thin asyncio transports for one upstream exchange: send a packet, wait for an accepted reply.

`accept(data)` decides (sans-IO, see message.parse_reply) whether a datagram or
TCP message is the answer; anything it rejects is ignored and waiting goes on
until the deadline. UDP uses a fresh connected socket per exchange, so the
kernel picks a random ephemeral source port and only the upstream's address
can reach it.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import Callable, TypeVar

T = TypeVar("T")
MAX_TCP_MESSAGES = 64  # replies read from one connection before giving up on it


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, accept: Callable[[bytes], T | None], done: asyncio.Future):
        self.accept = accept
        self.done = done

    def datagram_received(self, data: bytes, addr) -> None:
        if self.done.done():
            return
        result = self.accept(data)
        if result is not None:
            self.done.set_result(result)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable: fail fast
        if not self.done.done():
            self.done.set_exception(exc)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def udp_exchange(server: tuple[str, int], packet: bytes, accept: Callable[[bytes], T | None], *,
                       timeout: float) -> T:
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: _UdpExchange(accept, done),
                                                       remote_addr=server, family=_family(server[0]))
    try:
        transport.sendto(packet)
        async with asyncio.timeout(timeout):
            return await done
    finally:
        transport.close()


async def tcp_exchange(server: tuple[str, int], packet: bytes, accept: Callable[[bytes], T | None], *,
                       timeout: float) -> T:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(server[0], server[1], family=_family(server[0]))
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            for _ in range(MAX_TCP_MESSAGES):
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                result = accept(await reader.readexactly(length))
                if result is not None:
                    return result
            raise ConnectionError(f"no matching reply in {MAX_TCP_MESSAGES} messages")
        finally:
            writer.close()
