"""FullCache: evict nothing (the reference every other policy is measured against)."""
from __future__ import annotations

from dataclasses import dataclass, field

from uio.cache.base import CachePolicy


@dataclass
class FullCache(CachePolicy):
    name: str = field(default="full", init=False)
