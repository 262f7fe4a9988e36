"""Capped exponential backoff with jitter, for every source that retries a remote API."""
from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Capped exponential backoff with jitter (each wait is 80-100% of the current step)."""

    initial: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    current: float = 0.0

    def __post_init__(self) -> None:
        self.initial = max(0.001, min(self.initial, self.cap))
        self.current = self.initial

    def next(self) -> float:
        step = self.current
        self.current = min(self.cap, self.current * 2)
        return step * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.current = self.initial
