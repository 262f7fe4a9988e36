"""Weighted choices with an injected RNG (the resolver owns no randomness)."""
from __future__ import annotations

import random
from itertools import permutations
from typing import Sequence

# every order of n equally weighted records, so a uniform shuffle costs one random() call
_ORDERS = {n: [list(p) for p in permutations(range(n))] for n in range(2, 6)}


def weighted_order(weights: Sequence[float], rng: random.Random) -> list[int]:
    """Indices in weighted-random order: index i comes first with probability w_i / sum(w).

    Efraimidis-Spirakis keys u**(1/w); zero weights go last in random order.
    """
    n = len(weights)
    if n <= 1:
        return list(range(n))
    orders = uniform_orders(weights)
    if orders is not None:
        return orders[int(rng.random() * len(orders))]
    rand = rng.random
    keys = [rand() ** (1.0 / w) if w > 0 else -rand() for w in weights]
    return sorted(range(n), key=keys.__getitem__, reverse=True)


def uniform_orders(weights: Sequence[float]) -> list[list[int]] | None:
    """Every order a shuffle of two to five equal positive weights can take; None for any other weights."""
    n = len(weights)
    first = weights[0] if n else 0
    if n in _ORDERS and first > 0 and weights.count(first) == n:
        return _ORDERS[n]
    return None


def weighted_pick(weights: Sequence[float], rng: random.Random) -> int:
    """One index with probability w_i / sum(w); -1 when nothing has weight."""
    total = sum(w for w in weights if w > 0)
    if total <= 0:
        return -1
    point = rng.random() * total
    last = -1
    for i, w in enumerate(weights):
        if w <= 0:
            continue
        last = i
        point -= w
        if point < 0:
            return i
    return last


def scale_shares(shares: Sequence[float], *, top: int = 65535) -> list[int]:
    """Shares (any positive scale) -> SRV weights 1..top, proportional, largest = top."""
    biggest = max(shares, default=0)
    if biggest <= 0:
        return [1] * len(shares)
    return [max(1, min(top, round(s / biggest * top))) for s in shares]
