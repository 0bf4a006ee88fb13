"""H2O: keep the heavy hitters (most attention received, accumulated) plus the most recent tokens."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from uio.cache.base import CachePolicy, LayerView, top_per_head


@dataclass
class H2O(CachePolicy):
    budget_tokens: int | None = None  # fixed budget per head; None: from target_eviction
    recent_ratio: float = 0.5  # share of the budget reserved for the most recent tokens
    name: str = field(default="h2o", init=False)

    def __post_init__(self) -> None:
        self.needs_scores = True

    def keep(self, layer: int, view: LayerView) -> torch.Tensor:
        budget = self.budget_tokens if self.budget_tokens is not None else self.budget(view.seen)
        if budget is None or view.scores is None:
            return view.valid
        n_recent = int(budget * self.recent_ratio)
        pos = torch.where(view.valid, view.positions.float(), float("-inf"))
        recent = top_per_head(pos, n_recent) & view.valid
        heavy = torch.where(view.valid & ~recent, view.scores, float("-inf"))
        return (recent | top_per_head(heavy, budget - n_recent)) & view.valid
