"""StreamingLLM: the first few tokens (attention sinks) plus a window of the most recent ones."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from uio.cache.base import CachePolicy, LayerView


@dataclass
class StreamingLLM(CachePolicy):
    """Sinks are protected; the rest of the budget goes to the newest tokens (the score is the position)."""

    sink: int = 4
    window: int | None = None  # None: whatever the eviction budget leaves after the sinks

    name: ClassVar[str] = "streaming"
    label: ClassVar[str] = "StreamingLLM (sinks + recent window)"

    def budget(self, seen: int) -> int | None:
        return self.sink + self.window if self.window is not None else super().budget(seen)

    def protected(self, budget: int | None) -> tuple[int, int]:
        return self.sink, 0

    def score(self, layer: int, view: LayerView) -> torch.Tensor:
        """(H, L): the position itself, so the newest entries win."""
        return view.positions.float()
