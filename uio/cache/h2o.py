"""H2O: keep the heavy hitters (most attention received, accumulated) plus the most recent tokens."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from uio.cache.base import CachePolicy, LayerView


@dataclass
class H2O(CachePolicy):
    """The newest ``recent_ratio`` of the budget is protected; the rest goes to the entries that received
    the most attention so far (summed over the queries that saw them and the heads of their KV group)."""

    budget_tokens: int | None = None  # fixed budget per head; None: from target_eviction
    recent_ratio: float = 0.5  # share of the budget reserved for the most recent tokens

    name: ClassVar[str] = "h2o"
    label: ClassVar[str] = "H2O (heavy hitters + recent)"
    needs_layer_masks: ClassVar[bool] = True  # after_attention recomputes the attention weights under the mask
    drafts: ClassVar[bool] = False  # the sums hold what rejected drafts gave every entry: no taking back

    def budget(self, seen: int) -> int | None:
        return self.budget_tokens if self.budget_tokens is not None else super().budget(seen)

    def protected(self, budget: int | None) -> tuple[int, int]:
        return 0, (0 if budget is None else int(budget * self.recent_ratio))

    def score(self, layer: int, view: LayerView) -> torch.Tensor | None:
        """(H, L) accumulated attention received by each held entry."""
        return self.scores[layer]

    # ---- state: per layer, the attention each held entry received ------------------------------
    def attach(self, cache) -> None:
        self.scores: list[torch.Tensor | None] = [None] * cache.n_layers  # (H, L) per layer
        self._inputs: dict[int, tuple] = {}  # layer -> (hidden, rotary cos/sin) of the forward running

    def before_attention(self, cache, layer: int, hidden: torch.Tensor, position_embeddings) -> None:
        self._inputs[layer] = (hidden, position_embeddings)

    def after_attention(self, cache, layer: int, attn) -> None:
        """Add the attention the new queries gave to every entry held (and to each other)."""
        hidden, (cos, sin) = self._inputs.pop(layer)
        cl = cache.cache.layers[layer]
        hd = cl.keys.shape[-1]
        qs = attn.q_proj(hidden).view(*hidden.shape[:-1], -1, hd).transpose(1, 2)
        apply = importlib.import_module(type(attn).__module__).apply_rotary_pos_emb
        qs, _ = apply(qs, qs, cos, sin)
        groups = cache.heads // cache.kv_heads
        keys = cl.keys.repeat_interleave(groups, 1)
        logits = (qs @ keys.transpose(-1, -2)) * attn.scaling + cache.layer_mask(layer)
        probs = logits.float().softmax(-1)[0]  # (heads, q, L)
        got = probs.sum(1).view(cache.kv_heads, groups, -1).sum(1)[:, cache.prefix_len:]  # (H, Lr + q)
        old = self.scores[layer]
        if old is not None:
            got[:, :old.shape[1]] += old
        self.scores[layer] = got

    def reorder(self, layer: int, take: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.scores[layer] is not None:
            self.scores[layer] = take(self.scores[layer])
