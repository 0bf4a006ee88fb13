"""FullCache: evict nothing (the reference every other policy is measured against)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from uio.cache.base import CachePolicy


@dataclass
class FullCache(CachePolicy):
    """Scores nothing, so keeps everything. ``uio.generate.stream`` reads the prompt in one prefill for it."""

    name: ClassVar[str] = "full"
    label: ClassVar[str] = "Full cache"
    fast_path: ClassVar[bool] = True

    @classmethod
    def at(cls, eviction: float, **options) -> "FullCache":
        return cls(**options)  # no budget: the eviction asked for does not apply


@dataclass
class ChunkedFullCache(FullCache):
    """FullCache read the way the evicting policies are: through PolicyCache, the prompt in chunks. Not a
    choice of its own (its name is "full"): for benches that measure that machinery's own cost, and for
    tests that check both paths give the same tokens."""

    fast_path: ClassVar[bool] = False
