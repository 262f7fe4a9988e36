"""The random choices of an answer, made here and only here, with an injected RNG.

An answer is one group of units (a split side, or one CNAME of a service of
hostnames) in a shuffled order. `choose` draws both; everything that answers
(the reply cache, the resolver's tests) calls it, so the same RNG state always
gives the same answer whichever way the reply is built.
"""
from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Choices:
    """What one answer may choose between: a group by weight, then an order of that group's units."""

    cumulative: tuple[float, ...]     # running totals of the groups' positive weights
    last: int                         # the last group with weight (or the last group)
    orders: tuple                     # per group: orders_for(its unit weights)
    weights: tuple                    # per group: its unit weights
    offsets: tuple[int, ...]          # per group: the index of its first listed order among all groups'
    count: int                        # how many orders are listed, all groups together

    @classmethod
    def of(cls, group_weights: Sequence[float], unit_weights: Sequence[Sequence[float]]) -> "Choices":
        cumulative, total, last, offsets, count = [], 0.0, len(group_weights) - 1, [], 0
        for i, w in enumerate(group_weights):
            if w > 0:
                total, last = total + w, i
            cumulative.append(total)
        orders = tuple(orders_for(w) for w in unit_weights)
        for o in orders:
            offsets.append(count)
            count += len(o) if o is not None else 0
        return cls(tuple(cumulative), last, orders, tuple(tuple(w) for w in unit_weights), tuple(offsets), count)


def choose(c: Choices, rng: random.Random) -> tuple[int, int, Order]:
    """(group, v, order): the group by weight, then its units' order. v numbers the order among every
    listed one (Choices.count of them), or is -1 when the order was drawn by weight."""
    n = len(c.orders)
    if n <= 1:
        if n == 0:
            return 0, 0, ()
        g = 0
    else:
        total = c.cumulative[-1]
        g = bisect_right(c.cumulative, rng.random() * total) if total > 0 else c.last
        if g >= n:
            g = c.last
    orders = c.orders[g]
    if orders is not None:
        k = 0 if len(orders) == 1 else int(rng.random() * len(orders))
        return g, c.offsets[g] + k, orders[k]
    return g, -1, _weighted_order(c.weights[g], rng)


def _weighted_order(weights: Sequence[float], rng: random.Random) -> list[int]:
    """Indices in weighted-random order: index i comes first with probability w_i / sum(w).

    Efraimidis-Spirakis keys u**(1/w); zero weights go last in random order.
    """
    rand = rng.random
    keys = [rand() ** (1.0 / w) if w > 0 else -rand() for w in weights]
    return sorted(range(len(weights)), key=keys.__getitem__, reverse=True)


def scale_shares(shares: Sequence[float], *, top: int = 65535) -> list[int]:
    """Shares (any positive scale) -> SRV weights 1..top, proportional, largest = top."""
    biggest = max(shares, default=0)
    if biggest <= 0:
        return [1] * len(shares)
    return [max(1, min(top, round(s / biggest * top))) for s in shares]
