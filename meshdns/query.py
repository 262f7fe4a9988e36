"""`meshdns query NAME [TYPE]`: ask a DNS server and print the reply as dig does.

For trying meshdns on a machine without dig. The query is what dig sends by
default (RD set, EDNS with a 1232-byte UDP size); a truncated UDP reply is
asked again over TCP, as dig does. Exit status as dig's: 0 when a reply came
(whatever its rcode), 9 when none did.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

from dnslib import EDNS0, QTYPE, DNSError, DNSRecord

from .config import ConfigError, parse_hostport
from .forward.transport import tcp_exchange, udp_exchange

DEFAULT_SERVER = "127.0.0.1:8600"
NO_REPLY = 9


def add_parser(sub) -> None:
    p = sub.add_parser("query", help="ask meshdns (or any DNS server) for a name and print the answer as dig does")
    p.add_argument("name", help="the name to ask for, e.g. legacy-billing.service.consul")
    p.add_argument("type", nargs="?", default="A", help="record type (default A), e.g. SRV, AAAA, TXT, PTR")
    p.add_argument("--server", default=DEFAULT_SERVER,
                   help=f"DNS server host:port (default {DEFAULT_SERVER}; port 53 when only a host is given)")
    p.add_argument("--tcp", action="store_true", help="ask over TCP (dig +tcp)")
    p.add_argument("--short", action="store_true", help="print only the answers' data (dig +short)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for a reply (default 3)")


def main(args: argparse.Namespace) -> int:
    try:
        server = parse_hostport(args.server, key="--server", default_port=53)
    except ConfigError as exc:
        print(f"meshdns query: {exc}", file=sys.stderr)
        return 1
    qtype = args.type.upper()
    if qtype not in QTYPE.reverse:
        print(f"meshdns query: unknown record type {args.type!r}", file=sys.stderr)
        return 1
    question = DNSRecord.question(args.name, qtype)
    question.add_ar(EDNS0(udp_len=1232))
    packet = question.pack()
    tcp = args.tcp
    started = time.monotonic()
    try:
        reply = _exchange(server, packet, tcp=tcp, timeout=args.timeout)
        if not tcp and reply[2] & 0x02:   # TC
            if not args.short:
                print(";; Truncated, retrying in TCP mode.")
            tcp = True
            reply = _exchange(server, packet, tcp=True, timeout=args.timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        print(f";; communications error to {_where(server)}: {exc or 'timed out'}", file=sys.stderr)
        print(";; no servers could be reached", file=sys.stderr)
        return NO_REPLY
    elapsed = time.monotonic() - started
    try:
        record = DNSRecord.parse(reply)
    except DNSError as exc:
        print(f";; bad reply from {_where(server)}: {exc}", file=sys.stderr)
        return NO_REPLY
    if args.short:
        for rr in record.rr:
            print(rr.rdata.toZone())
        return 0
    print(f"; <<>> meshdns query <<>> {args.name} {qtype} --server {args.server}{' --tcp' if args.tcp else ''}")
    print(";; Got answer:")
    print(dig_text(record))
    print(f";; Query time: {elapsed * 1000:.0f} msec")
    print(f";; SERVER: {_where(server)}({server[0]}) ({'TCP' if tcp else 'UDP'})")
    print(f";; MSG SIZE  rcvd: {len(reply)}")
    return 0


def dig_text(record: DNSRecord) -> str:
    """Header, OPT pseudosection and the non-empty sections, laid out as dig lays them out."""
    lines = record.header.toZone().splitlines()
    if record.header.rd and not record.header.ra:
        lines.append(";; WARNING: recursion requested but not available")
    for opt in (rr for rr in record.ar if rr.rtype == QTYPE.OPT):
        version, do = opt.ttl >> 16 & 0xFF, opt.ttl & 0x8000
        lines += ["", ";; OPT PSEUDOSECTION:", f"; EDNS: version: {version}, flags:{' do' if do else ''}; "
                  f"udp: {opt.rclass}"]
    lines += [";; QUESTION SECTION:", *(q.toZone() for q in record.questions)]
    for title, records in (("ANSWER", record.rr), ("AUTHORITY", record.auth),
                           ("ADDITIONAL", [rr for rr in record.ar if rr.rtype != QTYPE.OPT])):
        if records:
            lines += ["", f";; {title} SECTION:", *(rr.toZone() for rr in records)]
    return "\n".join(lines) + "\n"


def _exchange(server: tuple[str, int], packet: bytes, *, tcp: bool, timeout: float) -> bytes:
    def accept(data: bytes) -> bytes | None:   # the reply to our ID; anything else is ignored
        return data if len(data) >= 12 and data[:2] == packet[:2] else None
    exchange = tcp_exchange if tcp else udp_exchange
    return asyncio.run(exchange(server, packet, accept, timeout=timeout))


def _where(server: tuple[str, int]) -> str:
    return f"{server[0]}#{server[1]}"
