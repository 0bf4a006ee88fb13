"""KIVI-style int8 memories: round-trip error within half a step, keys per channel, values per token."""
import torch

from uio.compress import make_compressor
from uio.compress.quant import dequantize_kv, quantize, quantize_kv
from uio.decoder import logits_over_memories
from uio.memory import Memory


def test_round_trip_error_is_half_a_step():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(3, 50, 2, 16, generator=g)
    keys[..., 5] += 40.0  # an outlier channel, as real keys have
    values = torch.randn(3, 50, 2, 16, generator=g)
    values[:, 7] = 0.25  # a constant slot: restored exactly
    qk, qv = quantize_kv(keys, values)
    assert qk.codes.dtype == torch.uint8 and qk.step.shape == (3, 1, 2, 16) and qv.step.shape == (3, 50, 2, 1)
    k2, v2 = dequantize_kv(qk, qv, torch.float32)
    for x, y, q in ((keys, k2, qk), (values, v2, qv)):
        bound = q.step.float() * 0.5 + q.minimum.float().abs() * 2 ** -10 + 1e-6
        assert ((x - y).abs() <= bound).all()
    assert torch.equal(v2[:, 7], values[:, 7])
    rel = (k2 - keys).norm() / keys.norm()
    assert rel < 5e-3
    # the outlier channel is why keys go per channel: per token they would lose the other channels
    per_token = quantize(keys, dim=3).dequantize()
    assert (per_token - keys).norm() > 5 * (k2 - keys).norm()
    assert qk.nbytes < keys.numel() * 2 * 0.6  # about half of 16 bits


def test_int8_memory_reads_almost_like_the_16_bit_one(tiny_qwen):
    ids = torch.randint(100, 5000, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    mem = make_compressor("kvzip", 4).compress(tiny_qwen, [ids])
    k, v = dequantize_kv(*quantize_kv(mem.keys, mem.values), dtype=mem.keys.dtype)
    q8 = Memory(k, v, mem.segment_ids, mem.slots, mem.token_spans, mem.fingerprint, mem.ratio)
    nxt = torch.tensor([[11, 12, 13]])
    a, b = logits_over_memories(tiny_qwen, [mem], nxt), logits_over_memories(tiny_qwen, [q8], nxt)
    torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2)
