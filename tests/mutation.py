"""Seeded packet mutation shared by the fuzz test and the live fuzz script."""
from __future__ import annotations

import random


def mutate(rng: random.Random, base: bytes, *, rounds: int = 6, pointers: bool = False) -> bytes:
    """Flip, insert, cut, append, plant compression pointers (optional) or replace with noise."""
    data = bytearray(base)
    for _ in range(rng.randint(1, rounds)):
        op = rng.random()
        if op < 0.45 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.6:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif op < 0.75 and data:
            del data[rng.randrange(len(data)):]
        elif op < 0.85:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op < 0.95 and pointers and len(data) > 12:
            i = rng.randrange(12, len(data))
            data[i:i + 2] = bytes([0xC0 | rng.randrange(64), rng.randrange(256)])
        else:
            data = bytearray(rng.randbytes(rng.randint(0, 80)))
    return bytes(data)
