"""KIVI-style int8 for stored memories (arXiv 2402.02750): keys per channel, values per token.

Keys have a few channels with large, steady magnitudes (outlier channels), so
one scale per channel across the slots fits them; values have no such
structure and one scale per token (slot) bounds each slot's error by its own
range. Both are asymmetric: uint8 codes with a per-group minimum and step.

Halves a 16-bit memory (plus a small scale overhead). Not a default: its
effect on answers is to be measured first (DESIGN.md §10). The memory file
format is unchanged; these are a function pair for callers that store codes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Int8Tensor:
    """uint8 codes with the minimum and step of each group; ``x ≈ codes * step + minimum``."""

    codes: torch.Tensor  # uint8, the tensor's shape
    minimum: torch.Tensor  # float16, broadcastable to the shape (size 1 along the reduced dim)
    step: torch.Tensor  # float16, same shape as minimum

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.codes.to(torch.float32) * self.step.float() + self.minimum.float()).to(dtype)

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + (self.minimum.numel() + self.step.numel()) * 2


def quantize(x: torch.Tensor, dim: int) -> Int8Tensor:
    """Asymmetric 8-bit quantisation with one (minimum, step) per slice along ``dim`` (reduced over it)."""
    xf = x.float()
    lo = xf.amin(dim, keepdim=True)
    hi = xf.amax(dim, keepdim=True)
    # A constant group gets step 1 so codes stay 0 and the minimum restores it exactly.
    step = torch.where(hi > lo, (hi - lo) / 255.0, torch.ones_like(lo))
    # The stored (float16) minimum and step are the ones dequantisation uses, so round with those.
    lo16, step16 = lo.to(torch.float16), step.to(torch.float16)
    codes = ((xf - lo16.float()) / step16.float()).round_().clamp_(0, 255).to(torch.uint8)
    return Int8Tensor(codes, lo16, step16)


def quantize_kv(keys: torch.Tensor, values: torch.Tensor) -> tuple[Int8Tensor, Int8Tensor]:
    """Memory keys / values (layers, slots, kv_heads, head_dim) -> int8 keys per channel, values per token.

    Keys: one (minimum, step) per (layer, kv head, channel), over the slots (dim 1).
    Values: one per (layer, slot, kv head), over the head dimension (dim 3).
    """
    return quantize(keys, dim=1), quantize(values, dim=3)


def dequantize_kv(keys: Int8Tensor, values: Int8Tensor, dtype: torch.dtype = torch.bfloat16
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``quantize_kv``: keys, values (layers, slots, kv_heads, head_dim) in ``dtype``."""
    return keys.dequantize(dtype), values.dequantize(dtype)
