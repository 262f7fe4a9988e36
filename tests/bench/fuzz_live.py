#!/usr/bin/env python3
"""Send N mutated and malformed packets (default 1,000,000) at a live meshdns,
then check it still answers every valid query; print the figures as JSON.

    python tests/bench/fuzz_live.py [--packets 1000000]

UDP only to 127.0.0.1; seeded, bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench import free_port, start_meshdns, wait_answering  # noqa: E402
from mutation import mutate  # noqa: E402

ROOT = HERE.parent.parent


def q(name: str, qtype: int = 1, *, edns: bool = False, qid: int = 1) -> bytes:
    wire = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    ar = 1 if edns else 0
    pkt = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, ar) + wire + struct.pack("!HH", qtype, 1)
    if edns:
        pkt += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    return pkt


SEEDS = [q("legacy-billing.service.consul", 33, edns=True), q("oracle-db.service.consul"),
         q("consul", 6, edns=True), q("c0a81cd5.addr.dc1.consul"), q("billing-vm-1.node.consul", 16),
         q("213.28.168.192.in-addr.arpa", 12), q("wiki.corp.internal"), q("nope.service.consul")]

SPECIAL = [
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",                 # pointer to itself
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01a\xc0\xff\x00\x01\x00\x01",             # pointer past the end
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label > 63
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x3f" + b"a" * 63 * 5 + b"\x00\x00\x01\x00\x01",  # name > 255
    struct.pack("!HHHHHH", 1, 0, 0, 0, 0, 0),                                                 # qdcount 0
    struct.pack("!HHHHHH", 1, 0, 3, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01" * 3,             # qdcount 3
    q("oracle-db.service.consul", edns=True)[:-5],                                            # truncated OPT
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 2) + b"\x01a\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x10\x00" * 2,
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=8482)
    ap.add_argument("--out", default=str(HERE / "results" / "fuzz_live.json"))
    args = ap.parse_args()
    work = HERE / "work"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_meshdns(work, port, core=None, zones=ROOT / "zones", name="fuzz")
    rng = random.Random(args.seed)
    sent = replies = 0
    started = time.monotonic()
    try:
        wait_answering(port, "oracle-db.service.consul")
        pid = proc.p.pid
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for i in range(args.packets):
                if i % 50 == 0:
                    pkt = SPECIAL[(i // 50) % len(SPECIAL)]
                else:
                    pkt = mutate(rng, SEEDS[i % len(SEEDS)], rounds=8, pointers=True)
                try:
                    s.sendto(pkt, ("127.0.0.1", port))
                    sent += 1
                except BlockingIOError:
                    time.sleep(0.001)
                if i % 64 == 0:
                    try:
                        while s.recv(65535):
                            replies += 1
                    except (BlockingIOError, ConnectionRefusedError):
                        pass
                if i % 10000 == 0 and time.monotonic() - started > 1800:
                    break
        elapsed = time.monotonic() - started
        alive = proc.alive() and proc.p.pid == pid
        valid_ok = 0
        time.sleep(2)  # let the server drain what is still queued in its socket buffer
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            for n, pkt in enumerate(SEEDS):
                for _attempt in range(3):
                    s.sendto(pkt[:0] + bytes([0x40, n]) + pkt[2:], ("127.0.0.1", port))
                    try:
                        data = s.recv(65535)
                    except socket.timeout:
                        continue
                    valid_ok += data[3] & 0xF in (0, 3)
                    break
    finally:
        proc.stop()
    res = {"packets_sent": sent, "replies_seen": replies, "seconds": round(elapsed, 1), "server_alive": alive,
           "valid_queries_answered_after": f"{valid_ok}/{len(SEEDS)}", "crashes": 0 if alive else 1}
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if alive and valid_ok == len(SEEDS) else 1


if __name__ == "__main__":
    sys.exit(main())
