"""StreamingLLM baseline (Xiao et al. 2023): keep the attention sinks and the most recent tokens.

For a memory that means the segment's first ``n_sink`` tokens and its tail;
everything in the middle of the segment is lost. The score is the position, so
there are no ties and the choice is the same in every layer and head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from uio.compress.base import Prefill, ScoringCompressor
from uio.model import LoadedModel


@dataclass
class StreamingCompressor(ScoringCompressor):
    """score = position: sinks (forced by the base) + the most recent tokens."""

    name: ClassVar[str] = "streaming"
    label: ClassVar[str] = "StreamingLLM (sinks + recent)"
    version: ClassVar[str] = "2"  # 2: slot positions stored, sinks at most 1/8 of a budget

    def score(self, lm: LoadedModel, pre: Prefill) -> torch.Tensor:
        layers, _, kv, _ = pre.keys.shape
        pos = torch.arange(pre.n, dtype=torch.float32, device=pre.keys.device)
        return pos.expand(layers, kv, pre.n)
