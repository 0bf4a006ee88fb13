"""KIVI-style int8 for stored memories (arXiv 2402.02750): keys per channel, values per token.

Keys have a few channels with large, steady magnitudes (outlier channels), so
one scale per channel across the slots fits them; values have no such
structure and one scale per token (slot) bounds each slot's error by its own
range. Both are asymmetric: uint8 codes with a per-group minimum and step.

Halves a 16-bit memory (plus a small scale overhead). A storage option, not a
default: ``Memory.save(path, storage="int8")`` writes the codes and their
minima and steps (``uio.memory``), ``Memory.load`` reads them back
dequantised; measured in docs/COMPRESSION.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Int8Tensor:
    """uint8 codes with the minimum and step of each group; ``x ≈ codes * step + minimum``."""

    codes: torch.Tensor  # uint8, the tensor's shape
    minimum: torch.Tensor  # float16 (float32 beyond its range), broadcastable to the shape (size 1 along the
    # reduced dim)
    step: torch.Tensor  # same dtype and shape as minimum

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.codes.to(torch.float32) * self.step.float() + self.minimum.float()).to(dtype)

    @property
    def nbytes(self) -> int:
        return (self.codes.numel() + self.minimum.numel() * self.minimum.element_size()
                + self.step.numel() * self.step.element_size())


def quantize(x: torch.Tensor, dim: int) -> Int8Tensor:
    """Asymmetric 8-bit quantisation with one (minimum, step) per slice along ``dim`` (reduced over it).

    Every element is restored within half a step (plus float32 rounding): the stored minimum is rounded
    down and the stored step up, so ``[minimum, minimum + 255 * step]`` covers the group and no code is
    clipped. Minimum and step are float16, or float32 where a group's values leave float16's range.
    """
    xf = x.float()
    lo = xf.amin(dim, keepdim=True)
    hi = xf.amax(dim, keepdim=True)
    big = bool(lo.numel()) and max(float(lo.abs().max()), float(hi.abs().max())) > 60000.0
    sd = torch.float32 if big else torch.float16
    lo_s = lo.to(sd)
    lo_s = torch.where(lo_s.float() > lo, torch.nextafter(lo_s, torch.full_like(lo_s, float("-inf"))), lo_s)
    span = hi - lo_s.float()
    # A constant group gets step 1 so codes stay 0 and the minimum restores it (exactly where it is a float16).
    step_s = torch.where(span > 0, span / 255.0, torch.ones_like(lo)).to(sd)
    up = torch.nextafter(step_s, torch.full_like(step_s, float("inf")))
    step_s = torch.where((span > 0) & (step_s.float() * 255.0 < span), up, step_s)  # rounded up, never 0
    # The stored minimum and step are the ones dequantisation uses, so round with those.
    codes = ((xf - lo_s.float()) / step_s.float()).round_().clamp_(0, 255).to(torch.uint8)
    return Int8Tensor(codes, lo_s, step_s)


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
