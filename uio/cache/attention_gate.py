"""AttentionGate: a learned per-token, per-KV-head keep decision (uio/gate.py) as a cache policy."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from uio.cache.base import CachePolicy, LayerView
from uio.gate import AttentionGates


@dataclass
class AttentionGate(CachePolicy):
    """Keeps sinks, the last ``recent`` tokens and tokens whose keep probability reaches the threshold.

    With ``target_eviction`` the threshold is recalibrated before each eviction so that, over all layers
    and heads together, the target share of the tokens seen is evicted: the gate still decides which
    heads and layers keep more, which is what it learned (a uniform per-head budget would undo that).

    With ``window_share`` (and a target, on calibrated weights) the newest ``window_share`` of the budget
    is kept whole, as a recency window, and the gate's calibrated threshold evicts the target share from
    the older tokens: the gate judges a token once, whatever its distance, so it cannot say "keep this
    for a while"; a window can.
    """

    weights: AttentionGates | None = None
    threshold: float = 0.5
    window_share: float = 0.0
    name: str = field(default="gate", init=False)

    def __post_init__(self) -> None:
        if self.weights is None:
            raise ValueError("AttentionGate needs gate weights (AttentionGates)")
        self._threshold = self.threshold
        self._window = self.weights.config.recent

    def gate_for(self, layer: int):
        return self.weights.layers[layer]

    def _forced(self, positions: torch.Tensor, first_pos: int, seen: int) -> torch.Tensor:
        cfg = self.weights.config
        newest = first_pos + seen  # the position after the last token seen
        return (positions >= 0) & ((positions < first_pos + cfg.sink) | (positions >= newest - self._window))

    def prepare(self, cache) -> None:
        """With a target: the threshold is the quantile of every keep probability the gate has given so far
        (all layers and heads, sinks and the newest ``recent`` tokens aside) that evicts the target share
        of the tokens seen. Heads and layers the gate deems more useful keep more. With ``window_share``:
        the window's length and the calibrated threshold that evicts the target from the older tokens."""
        cfg = self.weights.config
        if self.target_eviction is None:
            self._threshold = self.threshold
            return
        if self.window_share > 0 and self.weights.quantiles:
            budget = (1.0 - self.target_eviction) * cache.seen
            self._window = max(cfg.recent, math.ceil(self.window_share * budget))
            older = cache.seen - cfg.sink - self._window
            self._threshold = (self.weights.threshold_for(min(1.0, self.target_eviction * cache.seen / older))
                               if older > 0 else float("-inf"))
            return
        decidable = cache.seen - cfg.sink - cfg.recent
        if decidable <= 0 or not cache.prob_history[0]:
            self._threshold = float("-inf")
            return
        share = min(1.0, self.target_eviction * cache.seen / decidable)
        probs = torch.cat([torch.cat(h, 1)[:, cfg.sink:cfg.sink + decidable].flatten() for h in cache.prob_history])
        k = int(round(share * len(probs)))
        if k <= 0:
            self._threshold = float("-inf")
        elif k >= len(probs):
            self._threshold = float("inf")
        else:  # keep prob >= the (k+1)-th smallest: the k smallest go
            self._threshold = float(probs.kthvalue(k + 1).values)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor:
        forced = self._forced(view.positions, view.first_pos, view.seen)
        return view.valid & (forced | (view.keep_prob >= self._threshold))
