"""StreamingLLM: the first few tokens (attention sinks) plus a window of the most recent ones."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from uio.cache.base import CachePolicy, LayerView, top_per_head


@dataclass
class StreamingLLM(CachePolicy):
    sink: int = 4
    window: int | None = None  # None: whatever the eviction budget leaves after the sinks
    name: str = field(default="streaming", init=False)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor:
        budget = self.budget(view.seen)
        window = self.window if self.window is not None else (None if budget is None else budget - self.sink)
        if window is None:
            return view.valid
        pos = view.positions.float()
        is_sink = view.valid & (view.positions < view.first_pos + self.sink)
        priority = torch.where(view.valid, pos, float("-inf"))
        recent = top_per_head(priority.masked_fill(is_sink, float("-inf")), max(window, 0))
        return (is_sink | recent) & view.valid
