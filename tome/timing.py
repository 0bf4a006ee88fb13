"""Where the time of a question goes: a tiny recorder of named phases.

Phases are wall-clock seconds measured with ``perf_counter``; a phase entered
twice adds up. ``Tome.ask`` puts them in ``stats["timing"]`` so a slow first
token can be traced to the store, the memory files, the cache assembly or the
model.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class Timer:
    """Named phases since ``start``; ``mark`` notes a moment, ``phase`` a stretch of work."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def since_start(self, at: float | None = None) -> float:
        """Seconds from ``start`` to ``at`` (a perf_counter value; default: now)."""
        return (time.perf_counter() if at is None else at) - self.start

    def as_dict(self, digits: int = 4) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.phases.items()}


@contextmanager
def maybe(timer: Timer | None, name: str) -> Iterator[None]:
    """``timer.phase(name)``, or nothing without a timer."""
    if timer is None:
        yield
    else:
        with timer.phase(name):
            yield
