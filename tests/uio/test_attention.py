"""The decoder's attention (uio/attention.py): grouped key/value heads read in place under a mask give bitwise the
numbers of transformers' SDPA, which copies them; the real models load with it."""

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from tests.conftest import _tiny
from uio.attention import ATTN_IMPL, attention_implementation, use_grouped_attention
from uio.cache.base import PolicyCache
from uio.cache.full import ChunkedFullCache


def _after_prefix(model, prefix: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits of ``ids`` read after ``prefix`` already cached: PolicyCache passes a 4D float mask (memories)."""
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=prefix, past_key_values=cache, use_cache=True)
        pc = PolicyCache(model, ChunkedFullCache(), cache, prefix.shape[1])
        return pc.forward(ids).logits


def _generated(model, ids: torch.Tensor) -> torch.Tensor:
    """HF generate over a padded batch: transformers makes the masks (from a 2D padding mask)."""
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in the second row: a real mask, not is_causal
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    return torch.stack(out.scores)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_grouped_attention_gives_sdpas_numbers_bitwise(tokenizer, monkeypatch, kind, dtype):
    lm = _tiny(kind, tokenizer)  # 4 query heads over 2 key/value heads
    model = lm.model.to(dtype)
    prefix, ids = torch.randint(100, 2000, (1, 23)), torch.randint(100, 2000, (1, 17))
    batch = torch.randint(100, 2000, (2, 19))
    with attention_implementation(model, "sdpa"):
        want = _after_prefix(model, prefix, ids), _generated(model, batch)
    grouped = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):  # the real function; notes which calls read the groups in place
        grouped.append(bool(kwargs.get("enable_gqa")) and kwargs.get("attn_mask") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with attention_implementation(model, ATTN_IMPL):
        got = _after_prefix(model, prefix, ids), _generated(model, batch)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert sum(grouped) >= 2 * 2  # both layers, in the prefill after the prefix and in generate's prefill
    assert not all(grouped)  # one-token decoding steps stay on transformers' path


def test_models_load_with_grouped_attention(smollm2, tokenizer):
    assert smollm2.model.config._attn_implementation == ATTN_IMPL  # SmolLM2: 9 query heads over 3
    eager = _tiny("qwen2", tokenizer).model
    eager.config._attn_implementation = "eager"
    assert not use_grouped_attention(eager) and eager.config._attn_implementation == "eager"  # only SDPA is routed
