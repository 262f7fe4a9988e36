"""A small scripted upstream DNS server for tests: UDP and TCP on 127.0.0.1, one port.

It runs in its own thread and event loop, so both blocking tests and asyncio
tests can use it. It answers from records added with `add()` (NXDOMAIN with an
SOA for unknown names, NODATA for known names without the asked type), and can
be told to misbehave: `mode` "servfail" / "refused" / "silent", a `delay`,
`tc_over_udp` (every UDP reply truncated, TCP complete), `spoof` (bogus replies
with a wrong ID and with a wrong question sent before the real one; with
`spoof_only` the real one never comes). Every query received is logged in
`queries`, so tests can count what reached the upstream.

Answers are built with dnspython, independently of meshdns's own wire code.
"""
from __future__ import annotations

import asyncio
import struct
import threading
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

BOGUS = "6.6.6.6"


@dataclass(frozen=True)
class Seen:
    transport: str      # "udp" | "tcp"
    qname: str          # as received
    qtype: str
    id: int
    rd: bool
    do: bool
    edns: bool
    port: int           # the client's source port


class Upstream:
    def __init__(self, *, name: str = "upstream", journal: list | None = None, negative_ttl: int = 60,
                 soa_ttl: int = 300):
        self.name = name
        self.journal = journal      # shared by several upstreams: (name, qname) in arrival order
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self.mode = "answer"
        self.delay = 0.0
        self.tc_over_udp = False
        self.spoof = False
        self.spoof_only = False
        self.negative_ttl = negative_ttl
        self.soa_ttl = soa_ttl
        self.queries: list[Seen] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="test-upstream", daemon=True)

    # -- script ---------------------------------------------------------------

    def add(self, name: str, rdtype: str, *values: str, ttl: int = 300) -> "Upstream":
        self.records[(_fqdn(name), rdtype.upper())] = (ttl, list(values))
        return self

    def count(self, name: str | None = None, rdtype: str | None = None, transport: str | None = None) -> int:
        with self._lock:
            return sum(1 for q in self.queries
                       if (name is None or q.qname.lower() == _fqdn(name))
                       and (rdtype is None or q.qtype == rdtype.upper())
                       and (transport is None or q.transport == transport))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- answering --------------------------------------------------------------

    def respond(self, data: bytes, transport: str, port: int = 0) -> list[tuple[float, bytes]]:
        """(delay, packet) pairs to send for one query packet."""
        try:
            q = dns.message.from_wire(data)
        except Exception:
            return []
        question = q.question[0]
        with self._lock:
            self.queries.append(Seen(transport, question.name.to_text(), dns.rdatatype.to_text(question.rdtype),
                                     q.id, bool(q.flags & dns.flags.RD), bool(q.ednsflags & dns.flags.DO),
                                     q.edns >= 0, port))
            if self.journal is not None:
                self.journal.append((self.name, question.name.to_text().lower()))
        if self.mode == "silent":
            return []
        out = []
        if self.spoof:
            out += [(self.delay, self._bogus(q, wrong_id=True)), (self.delay, self._bogus(q, wrong_id=False))]
            if self.spoof_only:
                return out
        reply = self._answer(q)
        wire = reply.to_wire(max_size=65535)
        if transport == "udp" and self.tc_over_udp:
            reply = dns.message.make_response(q)
            reply.flags |= dns.flags.TC
            wire = reply.to_wire()
        out.append((self.delay + (0.05 if self.spoof else 0.0), wire))
        return out

    def _answer(self, q: dns.message.Message) -> dns.message.Message:
        reply = dns.message.make_response(q)
        reply.flags |= dns.flags.RA
        if self.mode == "servfail":
            reply.set_rcode(dns.rcode.SERVFAIL)
            return reply
        if self.mode == "refused":
            reply.set_rcode(dns.rcode.REFUSED)
            return reply
        question = q.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        owner = question.name
        for _ in range(8):  # follow CNAMEs in our own data, as a recursor would
            found = self.records.get((name, rdtype))
            if found is not None:
                ttl, values = found
                reply.answer.append(dns.rrset.from_text_list(owner, ttl, "IN", rdtype, values))
                return reply
            alias = self.records.get((name, "CNAME"))
            if alias is None or rdtype == "CNAME":
                break
            reply.answer.append(dns.rrset.from_text_list(owner, alias[0], "IN", "CNAME", alias[1]))
            owner = dns.name.from_text(alias[1][0])
            name = owner.to_text().lower()
        if reply.answer:
            return reply
        if not any(n == name for n, _ in self.records):
            reply.set_rcode(dns.rcode.NXDOMAIN)
        zone = dns.name.from_text(name).parent() if name != "." else dns.name.root
        soa = dns.rrset.from_text(zone, self.soa_ttl, "IN", "SOA",
                                  f"ns.test. hostmaster.test. 1 3600 600 86400 {self.negative_ttl}")
        reply.authority.append(soa)
        return reply

    def _bogus(self, q: dns.message.Message, *, wrong_id: bool) -> bytes:
        if wrong_id:
            reply = dns.message.make_response(q)
            reply.id = (q.id + 1) & 0xFFFF
            owner = q.question[0].name
        else:
            other = dns.message.make_query("evil.example.", q.question[0].rdtype, id=q.id)
            reply = dns.message.make_response(other)
            owner = dns.name.from_text("evil.example.")
        if q.question[0].rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(owner, 300, "IN", "A", BOGUS))
        return reply.to_wire()

    # -- plumbing ---------------------------------------------------------------

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        udp = tcp = None
        for _ in range(20):
            udp, _proto = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=("127.0.0.1", 0))
            port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._tcp_client, "127.0.0.1", port)
            except OSError:
                udp.close()
                continue
            self.port = port
            break
        self._ready.set()
        if tcp is None:
            return
        await self._stop.wait()
        udp.close()
        tcp.close()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(length)
                for delay, packet in self.respond(data, "tcp", writer.get_extra_info("peername")[1]):
                    if delay:
                        await asyncio.sleep(delay)
                    writer.write(struct.pack("!H", len(packet)) + packet)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> "Upstream":
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise RuntimeError("test upstream did not start")
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> "Upstream":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        loop = asyncio.get_running_loop()
        for delay, packet in self.upstream.respond(data, "udp", addr[1]):
            if delay:
                loop.call_later(delay, self._send, packet, addr)
            else:
                self._send(packet, addr)

    def _send(self, packet: bytes, addr) -> None:
        if not self.transport.is_closing():
            self.transport.sendto(packet, addr)


def _fqdn(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."
