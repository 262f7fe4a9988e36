"""The random choices of an answer, made here and only here, with an injected RNG.

An answer is one group of units (a split side, or one CNAME of a service of
hostnames) in a shuffled order. `choose` draws both; everything that answers
(the reply cache, the resolver's tests) calls it, so the same RNG state always
gives the same answer whichever way the reply is built.
"""
from __future__ import annotations

import random
from itertools import permutations
from typing import Sequence

# every order of n equally weighted units, so a uniform shuffle costs one random() call
_ORDERS = {n: tuple(permutations(range(n))) for n in range(2, 6)}
_TRIVIAL = {n: (tuple(range(n)),) for n in range(2)}

Order = Sequence[int]


def orders_for(weights: Sequence[float]) -> tuple[tuple[int, ...], ...] | None:
    """Every order a shuffle of these weights can give, when they can be listed: at most one unit, or two
    to five equal positive weights. None for any other weights (each shuffle draws one number per unit)."""
    n = len(weights)
    if n < 2:
        return _TRIVIAL[n]
    first = weights[0]
    if n in _ORDERS and first > 0 and all(w == first for w in weights):
        return _ORDERS[n]
    return None


def choose(group_weights: Sequence[float], group_orders: Sequence, unit_weights: Sequence[Sequence[float]],
           rng: random.Random) -> tuple[int, int, Order]:
    """(group, k, order): the group by weight, then its units' order. k indexes group_orders[group] (from
    orders_for) when the order is one of those, else it is -1 and the order was drawn by weight."""
    n = len(group_weights)
    if n == 0:
        return 0, 0, ()
    g = 0 if n == 1 else weighted_pick(group_weights, rng)
    if g < 0:
        g = n - 1
    orders = group_orders[g]
    if orders is not None:
        k = 0 if len(orders) == 1 else int(rng.random() * len(orders))
        return g, k, orders[k]
    return g, -1, _weighted_order(unit_weights[g], rng)


def _weighted_order(weights: Sequence[float], rng: random.Random) -> list[int]:
    """Indices in weighted-random order: index i comes first with probability w_i / sum(w).

    Efraimidis-Spirakis keys u**(1/w); zero weights go last in random order.
    """
    rand = rng.random
    keys = [rand() ** (1.0 / w) if w > 0 else -rand() for w in weights]
    return sorted(range(len(weights)), key=keys.__getitem__, reverse=True)


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
