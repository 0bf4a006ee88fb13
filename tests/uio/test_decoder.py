"""Cache assembly: memories rotated to their positions exactly as the model rotates keys."""
import torch
from uio.decoder import build_cache, rotate_keys


def test_cache_assembly_rotates_like_the_model_and_leaves_memories_untouched(adapter, memory):
    lm = adapter.lm
    before_k, before_v = memory.keys.clone(), memory.values.clone()
    other = memory.select([2, 0])
    cache, m = build_cache(lm, [memory, other])
    assert m == memory.num_slots + other.num_slots
    keys = torch.cat([memory.keys, other.keys], 1)
    values = torch.cat([memory.values, other.values], 1)
    expect = rotate_keys(lm, keys[:, None])  # the model's own apply_rotary_pos_emb
    for layer in range(keys.shape[0]):
        k, v = cache.layers[layer].keys, cache.layers[layer].values
        assert torch.allclose(k, expect[layer], atol=1e-6)
        assert torch.equal(v, values[layer].transpose(0, 1)[None])
    assert torch.equal(memory.keys, before_k) and torch.equal(memory.values, before_v)
