"""AttentionGate: a learned per-token, per-KV-head keep decision (uio/gate.py) as a cache policy."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from uio.cache.base import CachePolicy, LayerView, top_per_head
from uio.gate import AttentionGates


@dataclass
class AttentionGate(CachePolicy):
    weights: AttentionGates | None = None
    threshold: float = 0.5  # used when no target_eviction is set
    name: str = field(default="gate", init=False)

    def __post_init__(self) -> None:
        if self.weights is None:
            raise ValueError("AttentionGate needs gate weights (AttentionGates)")

    def gate_for(self, layer: int):
        return self.weights.layers[layer]

    def keep(self, layer: int, view: LayerView) -> torch.Tensor:
        cfg = self.weights.config
        newest = view.first_pos + view.seen  # position after the last token seen
        forced = view.valid & ((view.positions < view.first_pos + cfg.sink) | (view.positions >= newest - cfg.recent))
        prob = view.keep_prob
        budget = self.budget(view.seen)
        if budget is None:
            return view.valid & (forced | (prob >= self.threshold))
        # Equal-eviction comparisons: each head keeps its forced tokens and the most probable others.
        priority = torch.where(view.valid & ~forced, prob, float("-inf"))
        rest = max(budget - int(forced.sum(1).max()), 0)
        return view.valid & (forced | top_per_head(priority, rest))
