"""Wall-clock accounting by phase (data, train, evaluate, ...), recorded into results provenance."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Accumulates wall seconds per named phase.

    Example:
        >>> timer = PhaseTimer()
        >>> with timer("train"):
        ...     pass
        >>> sorted(timer.seconds)
        ['train']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        """Seconds per phase, rounded to milliseconds."""
        return {k: round(v, 3) for k, v in self.seconds.items()}
