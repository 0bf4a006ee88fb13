"""AttentionGate: a learned per-token, per-KV-head keep decision (uio/gate.py) as a cache policy."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, ClassVar

import torch

from uio.cache.base import CachePolicy, LayerView
from uio.gate import AttentionGates


HOLD_TOKENS = 512  # prompt chunks up to this long are judged at the next eviction (24 layers x 512 x 896 bf16
# hidden states held for Qwen-0.5B: 22 MB); longer ones as they are read


@dataclass
class AttentionGate(CachePolicy):
    """Keeps sinks, the last ``recent`` tokens and tokens whose keep probability reaches the threshold.

    The score is the gate's keep probability; unlike the other policies it is not ranked against a
    per-head budget (``select``): the gate decides which heads and layers keep more, which is what it
    learned (a uniform per-head budget would undo that).

    With ``target_eviction`` the threshold is recalibrated before each eviction so that, over all layers
    and heads together, the target share of the tokens seen is evicted.

    With ``window_share`` (and a target, on calibrated weights) the newest ``window_share`` of the budget
    is kept whole, as a recency window, and the gate's calibrated threshold evicts the target share from
    the older tokens: the gate judges a token once, whatever its distance, so it cannot say "keep this
    for a while"; a window can.
    """

    weights: AttentionGates | None = None
    threshold: float = 0.5
    window_share: float = 0.0

    name: ClassVar[str] = "gate"
    label: ClassVar[str] = "Attention-Gate (learned)"

    def __post_init__(self) -> None:
        if self.weights is None:
            raise ValueError("AttentionGate needs gate weights (AttentionGates)")
        self._threshold = self.threshold
        self._window = self.weights.config.recent

    @classmethod
    def at(cls, eviction: float, weights: AttentionGates | None = None, window_share: float = 0.0
           ) -> "AttentionGate":
        """Calibrated weights: a fixed threshold from their quantiles, decisions made once per token (with
        ``window_share``: the window path, which needs the target). Uncalibrated: the target, online."""
        if weights is None:
            raise ValueError("AttentionGate needs gate weights (AttentionGates)")
        threshold = weights.threshold_for(eviction)
        if threshold is not None and window_share > 0:
            return cls(target_eviction=eviction, weights=weights, window_share=window_share)
        if threshold is not None:
            return cls(weights=weights, threshold=threshold)
        return cls(target_eviction=eviction, weights=weights)

    # ---- the decision ---------------------------------------------------------------------------
    def protected(self, budget: int | None) -> tuple[int, int]:
        return self.weights.config.sink, self._window

    def score(self, layer: int, view: LayerView) -> torch.Tensor | None:
        """(H, L) keep probability the gate gave each held entry."""
        return self.keep_prob[layer]

    def select(self, candidates: torch.Tensor, k: int | None) -> torch.Tensor:
        return candidates >= self._threshold  # the budget is met over the whole cache by prepare(), not per head

    def prepare(self, cache) -> None:
        """Judge the tokens still waiting, then set the threshold. With a target: the quantile of every keep
        probability the gate has given so far (all layers and heads, sinks and the newest ``recent`` tokens
        aside) that evicts the target share of the tokens seen. Heads and layers the gate deems more useful
        keep more. With ``window_share``: the window's length and the calibrated threshold that evicts the
        target from the older tokens."""
        for layer in range(cache.n_layers):
            self._judge(layer)
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
        if decidable <= 0 or not self.prob_history[0]:
            self._threshold = float("-inf")
            return
        share = min(1.0, self.target_eviction * cache.seen / decidable)
        probs = torch.cat([torch.cat(h, 1)[:, cfg.sink:cfg.sink + decidable].flatten() for h in self.prob_history])
        k = int(round(share * len(probs)))
        if k <= 0:
            self._threshold = float("-inf")
        elif k >= len(probs):
            self._threshold = float("inf")
        else:  # keep prob >= the (k+1)-th smallest: the k smallest go
            self._threshold = float(probs.kthvalue(k + 1).values)

    # ---- state: per layer, the gate's own rolling K/V and the keep probabilities it gave --------------
    def attach(self, cache) -> None:
        n = cache.n_layers
        self.keep_prob: list[torch.Tensor | None] = [None] * n  # (H, L) per layer, aligned with the entries held
        self.prob_history: list[list[torch.Tensor]] = [[] for _ in range(n)]  # every (H, q) given, in order
        self._state: list[object] = [None] * n  # the gate's own rolling K/V
        # Layer inputs of tokens not judged yet. Decisions matter only when eviction runs, so decoded tokens
        # are judged together then, in one call per layer: on CPU a call per token per layer cost more than
        # eviction saved (qwen at 768 tokens decoded at 0.89x the full cache's speed).
        self._pending: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self._threshold = self.threshold
        self._window = self.weights.config.recent

    def before_attention(self, cache, layer: int, hidden: torch.Tensor, position_embeddings) -> None:
        self._pending[layer].append(hidden)
        # A long prompt chunk is judged now rather than its hidden states held; a short one (compressed mode's
        # prompt) waits for the eviction that follows its first token, so that token does not wait for it.
        if hidden.shape[1] > HOLD_TOKENS:
            self._judge(layer)

    def reorder(self, layer: int, take: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.keep_prob[layer] is not None:
            self.keep_prob[layer] = take(self.keep_prob[layer])

    def forget(self, cache, n: int) -> None:
        """Drop the newest ``n`` tokens' layer inputs: they wait unjudged (a drafted chunk is never longer than
        ``HOLD_TOKENS``), so nothing else saw them."""
        for layer in range(cache.n_layers):
            pending = self._pending[layer]
            if not pending or pending[-1].shape[1] < n:
                raise RuntimeError("the gate judged tokens that are being taken back")
            last = pending[-1][:, :-n]
            if last.shape[1]:
                pending[-1] = last
            else:
                pending.pop()

    def _judge(self, layer: int) -> None:
        """Run the layer's gate over the tokens it has not judged yet (in order, continuing its own state)."""
        pending = self._pending[layer]
        if not pending:
            return
        hidden = pending[0] if len(pending) == 1 else torch.cat(pending, 1)
        probs, self._state[layer] = self.weights.layers[layer].step(hidden, self._state[layer])
        new = probs[0].transpose(0, 1).to(torch.float32)  # (H, q)
        self.prob_history[layer].append(new)
        old = self.keep_prob[layer]
        self.keep_prob[layer] = new if old is None else torch.cat([old, new], 1)
        self._pending[layer] = []


def load_gates(path: Path, base_model: str | None = None) -> AttentionGates:
    """The gate weights at ``path``, read from disk once per file version (a policy is made per question).
    A missing file raises FileNotFoundError saying how to train one; ``base_model`` refuses another model's."""
    path = Path(path)
    if not path.is_file():
        return AttentionGates.load(path, base_model=base_model)  # raises, saying how to train one
    return _load_gates(path, path.stat().st_mtime_ns, base_model)


@lru_cache(maxsize=4)
def _load_gates(path: Path, _version: int, base_model: str | None) -> AttentionGates:
    return AttentionGates.load(path, base_model=base_model)  # read-only afterwards: policies share it
