"""Key-norm baseline (Devoto et al. 2024, kvpress ``KnormPress``): keep the keys with the smallest L2 norm.

Low-norm keys tend to draw high attention, so they are kept; no extra pass,
the cheapest scoring method. The norm is taken on the pre-RoPE key (RoPE is a
rotation: the same norm) in float32 so close norms do not tie in 16 bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from uio.compress.base import Prefill, ScoringCompressor
from uio.model import LoadedModel


@dataclass
class KeyNormCompressor(ScoringCompressor):
    """score = -||k||: smallest-norm keys first."""

    name: ClassVar[str] = "keynorm"
    label: ClassVar[str] = "Key-norm (smallest keys kept)"
    version: ClassVar[str] = "2"  # 2: slot positions stored, sinks at most 1/8 of a budget

    def score(self, lm: LoadedModel, pre: Prefill) -> torch.Tensor:
        # pre.keys (layers, n, kv, hd) -> (layers, kv, n)
        return -torch.linalg.vector_norm(pre.keys.float(), dim=-1).transpose(1, 2)
