"""The decoder's attention on the CPU: transformers' SDPA, without copying grouped key/value heads under a mask.

With grouped-query attention (Qwen2.5: 14 query heads over 2 key/value heads) and an attention mask, transformers
repeats every key/value head for its query heads (``repeat_kv``: a copy of each layer's keys and values) before
calling ``scaled_dot_product_attention``, as CUDA's kernels fall back to the slow math path for grouped heads
under a mask. torch's CPU flash kernel reads the groups itself (``enable_gqa``) with a mask too, with the same
arithmetic: the outputs are bitwise the same (tests/uio/test_attention.py), and compressed mode's prefill (its
memories make a mask) skips 24 copies. A 270-token prefill over 555 positions: 1.48 -> 1.19 ms per layer on two
threads (docs/COMPRESSION.md, "Twenty-third run").

Everything else (no mask, one query token, no groups, other devices) goes to transformers' own function.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTN_IMPL = "tome_sdpa"


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """query (B, H, q, d), key/value (B, Hkv, k, d), a float or bool mask broadcastable to (B, H, q, k)."""
    grouped = query.shape[1] != key.shape[1]
    plain = (attention_mask is None or not grouped or query.shape[2] == 1 or query.device.type != "cpu"
             or kwargs.get("position_bias") is not None or kwargs.get("cache") is not None
             or kwargs.get("softcap") is not None or kwargs.get("output_attentions", False))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPL, grouped_attention)
# masks made as for "sdpa": transformers builds none at all for an implementation it has no mask function for
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPL, sdpa_mask)


def use_grouped_attention(model: torch.nn.Module) -> bool:
    """Route ``model``'s SDPA attention through ``grouped_attention`` (only where it runs SDPA); True if so."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    config._attn_implementation = ATTN_IMPL
    return True


@contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """``model`` runs the attention implementation ``name`` inside the block (the UIO encoder's, the compressors'
    observed attention), and its own again after it. Its other users must wait meanwhile (the model lock)."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous
