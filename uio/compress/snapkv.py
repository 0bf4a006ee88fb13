"""SnapKV baseline (arXiv 2404.14469, as kvpress ``SnapKVPress``): score by the last queries' attention.

In a query-aware setting the window holds the question; for a memory there is
no question yet, so the window is the segment's own last ``window`` tokens (the
"generic window" the literature finds collapsing beyond ~85 % compression; a
baseline). Score of token t: the window queries' attention on t (softmax over
the whole causal prefix), averaged over queries, smoothed by a 1-D average
pool of ``kernel`` tokens, averaged over the KV head's query group. The window
tokens themselves rank above every other (kvpress keeps them all); when the
budget is smaller than the window, the most recent of them win.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from uio.compress.base import Prefill, ScoringCompressor, attention_probs, causal_offset_mask
from uio.model import LoadedModel


@dataclass
class SnapKVCompressor(ScoringCompressor):
    """Attention from the segment's last ``window`` queries, pooled."""

    name: ClassVar[str] = "snapkv"
    label: ClassVar[str] = "SnapKV (last-64-token window)"
    version: ClassVar[str] = "2"  # 2: slot positions stored, sinks at most 1/8 of a budget
    window: int = 64
    kernel: int = 5

    def window_for(self, n: int) -> int:
        """The window, at most half a short segment (kvpress refuses segments shorter than the window)."""
        return max(1, min(self.window, n // 2))

    def observe(self, module: torch.nn.Module, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor | None:
        """(kv, n - w) pooled attention of the last w queries on the earlier tokens, for this layer."""
        n = keys.shape[2]
        if n < 2:  # a one-token segment is kept whole: nothing to score
            return None
        w = self.window_for(n)
        mask = causal_offset_mask(w, n, query.device)
        probs = attention_probs(module, query[:, :, -w:], keys, mask)[..., :n - w]  # (kv, G, w, n - w)
        kv, g = probs.shape[:2]
        s = probs.mean(2).reshape(kv * g, 1, n - w)  # mean over the window's queries
        s = F.avg_pool1d(s, kernel_size=self.kernel, padding=self.kernel // 2, stride=1)
        return s.reshape(kv, g, n - w).mean(1)  # mean over the group

    def score(self, lm: LoadedModel, pre: Prefill) -> torch.Tensor:
        seen = torch.stack(pre.observed)  # (layers, kv, n - w)
        w = pre.n - seen.shape[-1]
        # Window tokens above everything else, later ones first (a deterministic order when they must compete).
        top = seen.amax() + 1 + torch.arange(w, dtype=seen.dtype, device=seen.device) / w
        return torch.cat([seen, top.expand(*seen.shape[:2], w)], -1)
