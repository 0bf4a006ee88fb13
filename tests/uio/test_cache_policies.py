"""Cache policies on tiny random models: they keep exactly what they say, and eviction is real."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from uio.cache import (H2O, POLICIES, CachePolicy, ChunkedFullCache, FullCache, PolicyCache, StreamingLLM,
                       policy_choices, policy_label, resolve_policy)
from uio.decoder import cache_from
from uio.generate import stream


def _ids(lm, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.model.config.vocab_size, (1, n), generator=g)


def _run(lm, policy, ids, chunk=32, cache=None, prefix_len=0) -> PolicyCache:
    pc = PolicyCache(lm.model, policy, cache, prefix_len)
    with torch.no_grad():
        for i in range(0, ids.shape[1], chunk):
            pc.forward(ids[:, i:i + chunk])
            pc.evict()
    return pc


def _memory_cache(lm, slots: int):
    """A cache holding ``slots`` random memory entries (pre-RoPE keys), as the memory decoder builds it."""
    c = lm.model.config
    hd = c.hidden_size // c.num_attention_heads
    g = torch.Generator().manual_seed(7)
    keys = torch.randn(c.num_hidden_layers, 1, slots, c.num_key_value_heads, hd, generator=g)
    values = torch.randn(c.num_hidden_layers, 1, slots, c.num_key_value_heads, hd, generator=g)
    return cache_from(lm, keys, values)


def test_full_cache_in_chunks_gives_the_logits_of_one_forward(tiny_llama):
    ids = _ids(tiny_llama, 100)
    with torch.no_grad():
        ref = tiny_llama.model(ids).logits
        pc = PolicyCache(tiny_llama.model, FullCache())
        got = torch.cat([pc.forward(ids[:, i:i + 32]).logits for i in range(0, 100, 32)], 1)
    assert torch.allclose(got, ref, atol=1e-5)
    assert pc.eviction_rate() == 0.0


def test_streaming_keeps_sinks_and_the_window(tiny_llama):
    pc = _run(tiny_llama, StreamingLLM(sink=4, window=20), _ids(tiny_llama, 96))
    expect = list(range(4)) + list(range(76, 96))
    for pos in pc.positions:
        assert (pos == torch.tensor(expect)).all()
    assert pc.layer_len(0) == 24
    assert pc.eviction_rate() == pytest.approx(1 - 24 / 96)


def test_budgets_follow_the_target_eviction(tiny_llama):
    for policy in (StreamingLLM(target_eviction=0.6), H2O(target_eviction=0.6)):
        pc = _run(tiny_llama, policy, _ids(tiny_llama, 128))
        budget = policy.budget(128)
        assert budget == 52  # ceil(0.4 * 128)
        assert all(p.shape[1] == budget and bool((p >= 0).all()) for p in pc.positions)
        assert pc.eviction_rate() == pytest.approx(1 - 52 / 128)


def test_h2o_keeps_recent_plus_most_attended(tiny_llama):
    policy = H2O(budget_tokens=24, recent_ratio=0.5)
    ids = _ids(tiny_llama, 64)
    pc = PolicyCache(tiny_llama.model, policy)
    with torch.no_grad():
        pc.forward(ids[:, :32])
        pc.evict()
        pc.forward(ids[:, 32:])
        scores = policy.scores[0].clone()
        positions = pc.positions[0].clone()
        pc.evict()
    for h in range(positions.shape[0]):
        held = positions[h][positions[h] >= 0]
        recent = set(range(64 - 12, 64))
        older = [(float(scores[h, j]), int(held[j])) for j in range(len(held)) if int(held[j]) not in recent]
        heavy = {p for _, p in sorted(older, reverse=True)[:12]}
        assert set(pc.positions[0][h].tolist()) == recent | heavy


def test_h2o_scores_are_the_attention_the_model_gives(tiny_llama):
    """One decode step's accumulated score per KV head equals that step's attention weights, summed over its group."""
    model = tiny_llama.model
    ids = _ids(tiny_llama, 10)
    policy = H2O(budget_tokens=100)
    pc = PolicyCache(model, policy)
    with torch.no_grad():
        pc.forward(ids[:, :9])
        before = policy.scores[1][:, :9].clone()
        pc.forward(ids[:, 9:])
        eager = model.config._attn_implementation
        model.config._attn_implementation = "eager"
        try:
            att = model(ids, output_attentions=True).attentions[1][0, :, -1]  # (heads, 10)
        finally:
            model.config._attn_implementation = eager
    kv = model.config.num_key_value_heads
    expect = att.view(kv, -1, 10).sum(1)
    assert torch.allclose(policy.scores[1][:, :9] - before, expect[:, :9], atol=1e-5)


def test_memory_prefix_is_never_evicted(tiny_llama):
    slots = 16
    cache = _memory_cache(tiny_llama, slots)
    prefix_keys = cache.layers[0].keys.clone()
    pc = _run(tiny_llama, StreamingLLM(sink=2, window=8), _ids(tiny_llama, 64), cache=cache, prefix_len=slots)
    layer = pc.cache.layers[0]
    assert layer.keys.shape[2] == slots + 10
    assert torch.equal(layer.keys[:, :, :slots], prefix_keys)
    assert pc.positions[0][0].tolist() == [16, 17] + list(range(72, 80))


def test_evicted_cache_gives_the_logits_of_masked_full_attention(tiny_qwen):
    """Per-head eviction (heads keep different tokens, padded) == full attention with those entries masked,
    for a chunk read after the eviction and for tokens decoded one at a time after it (their masks grow from
    the previous forward's)."""
    model = tiny_qwen.model
    ids = _ids(tiny_qwen, 48)

    class OddEven(FullCache):
        """Head 0 keeps even positions, head 1 odd ones below 20 (different counts: pads)."""

        def keep(self, layer, view):
            keep = view.valid.clone()
            keep[0] &= view.positions[0] % 2 == 0
            keep[1] &= (view.positions[1] % 2 == 1) & (view.positions[1] < 20)
            return keep

    pc = PolicyCache(model, OddEven())
    with torch.no_grad():
        pc.forward(ids[:, :32])
        full_bytes = sum(pc.kv_bytes_held())
        pc.evict()
        got = [pc.forward(ids[:, 32:40]).logits] + [pc.forward(ids[:, i:i + 1]).logits for i in range(40, 48)]
        got = torch.cat(got, 1)
    assert pc.positions[0][1, 10:16].tolist() == [-1] * 6  # head 1 keeps 10, head 0 16: pads
    assert sum(pc.kv_bytes_held()) < full_bytes * 48 / 32  # fewer entries held than without eviction

    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    allowed = torch.ones(48, 48).tril().bool()[None].repeat(heads, 1, 1)
    per_kv = torch.ones(kv, 48, dtype=torch.bool)
    per_kv[0, :32] = torch.arange(32) % 2 == 0
    per_kv[1, :32] = (torch.arange(32) % 2 == 1) & (torch.arange(32) < 20)
    allowed[:, 32:, :32] &= per_kv.repeat_interleave(heads // kv, 0)[:, None, :32]
    mask = torch.zeros(1, heads, 48, 48).masked_fill(~allowed[None], torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits[:, 32:]
    assert torch.allclose(got, ref, atol=1e-4)


def test_per_layer_masks_are_built_one_layer_at_a_time(tiny_qwen):
    """After an uneven eviction each layer needs its own (heads, q, held + q) mask: only one may be alive
    at a time (all of them at once ran an 8K prompt out of memory)."""
    import weakref

    model = tiny_qwen.model
    ids = _ids(tiny_qwen, 64)

    class Uneven(FullCache):
        def keep(self, layer, view):
            return view.valid & (view.positions % (layer + 2) == 0)

    pc = PolicyCache(model, Uneven())
    made: list = []
    build = pc._mask

    def counting(layer, q):
        mask = build(layer, q)
        made.append(weakref.ref(mask))
        alive.append(sum(r() is not None for r in made))
        return mask

    alive: list[int] = []
    pc._mask = counting
    with torch.no_grad():
        pc.forward(ids[:, :32])
        pc.evict()
        pc.forward(ids[:, 32:64])
    assert len(made) == model.config.num_hidden_layers and max(alive) == 1
    assert pc._current is None and all(r() is None for r in made)


def test_bytes_held_drop_with_eviction(tiny_llama):
    ids = _ids(tiny_llama, 128)
    full = sum(_run(tiny_llama, FullCache(), ids).kv_bytes_held())
    held = sum(_run(tiny_llama, StreamingLLM(target_eviction=0.7), ids).kv_bytes_held())
    assert full == 128 * tiny_llama.kv_bytes_per_token
    assert held == 39 * tiny_llama.kv_bytes_per_token  # ceil(0.3 * 128)


def _text(gen) -> str:
    return "".join(gen)


def test_policy_generation_with_full_cache_equals_one_prefill(tiny_llama):
    messages = [{"role": "user", "content": "Tell me about the sea and the ships that sail on it, please."}]
    plain = stream(tiny_llama, messages, max_new_tokens=16)
    text = _text(plain)
    gen = stream(tiny_llama, messages, ChunkedFullCache(), max_new_tokens=16, chunk=8)
    assert _text(gen) == text
    assert gen.stats.new_tokens == plain.stats.new_tokens
    assert gen.stats.policy == "full" and gen.stats.eviction_rate == 0.0
    assert len(gen.stats.kv_bytes_held) == tiny_llama.model.config.num_hidden_layers


def test_policy_generation_after_memories_reports_eviction(tiny_llama):
    messages = [{"role": "user", "content": "word " * 120}]
    cache = _memory_cache(tiny_llama, 8)
    gen = stream(tiny_llama, messages, StreamingLLM(target_eviction=0.5), past_key_values=cache,
                 prefix_len=8, max_new_tokens=40, chunk=16)
    _text(gen)
    assert gen.stats.prefix_len == 8
    assert 0.4 < gen.stats.eviction_rate < 0.6
    assert gen.stats.kv_bytes_held[0] < (8 + gen.stats.prompt_tokens) * tiny_llama.kv_bytes_per_token / 2


def test_policy_path_prefills_a_default_prompt_in_one_forward_and_evicts_while_decoding(tiny_llama):
    messages = [{"role": "user", "content": "word " * 120}]
    forwards = []
    h = tiny_llama.model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        gen = stream(tiny_llama, messages, StreamingLLM(target_eviction=0.5), max_new_tokens=3)
        _text(gen)
    finally:
        h.remove()
    assert gen.stats.prompt_tokens > 120 and len(forwards) == 1 + 2  # one prefill, then one per new token
    held = {}
    for every in (4, 1000):  # decode evicts every `evict_every` tokens, whatever the prefill chunk
        gen = stream(tiny_llama, messages, StreamingLLM(target_eviction=0.5), max_new_tokens=24,
                     evict_every=every)
        _text(gen)
        assert gen.stats.new_tokens == 24
        held[every] = gen.stats.kv_bytes_held[0]
    assert held[4] < held[1000]


def test_resolve_policy_names(tmp_path):
    assert tuple(POLICIES) == ("full", "streaming", "h2o", "gate")
    assert isinstance(resolve_policy("full", 0.6), FullCache)
    assert resolve_policy("streaming", 0.3).budget(100) == 70
    assert resolve_policy("h2o", 0.7).budget(100) == 30
    with pytest.raises(ValueError):
        resolve_policy("lru", 0.5)
    with pytest.raises(FileNotFoundError, match="uio.train.gate"):
        resolve_policy("gate", 0.5, "no-such-model", gate_file=tmp_path / "none.safetensors")


def test_registry_lists_each_policy_once_and_auto_first():
    names = policy_choices()
    assert names[0] == "auto" and names[1:] == tuple(POLICIES)
    assert len(set(names)) == len(names)
    assert all(cls.name == name for name, cls in POLICIES.items())
    assert policy_label("full") == "Full cache" and policy_label("auto").startswith("Automatic")
    with pytest.raises(ValueError, match="use one of auto, full, streaming, h2o, gate"):
        resolve_policy("lru", 0.5)
    with pytest.raises(ValueError, match="eviction"):
        resolve_policy("h2o", 1.5)


@dataclass
class KeyNorm(CachePolicy):
    """Keeps the entries whose keys have the smallest norm (kvpress's KnormPress), after two sinks."""

    name: ClassVar[str] = "knorm"

    def protected(self, budget):
        return 2, 0

    def score(self, layer, view):
        return -view.keys.float().norm(dim=-1)


def test_a_new_policy_is_one_small_dataclass(tiny_llama, monkeypatch):
    """A policy defined here works through PolicyCache, and through the registry, with no base code edited."""
    monkeypatch.setitem(POLICIES, "knorm", KeyNorm)
    assert "knorm" in policy_choices()
    policy = resolve_policy("knorm", 0.5)
    assert isinstance(policy, KeyNorm) and policy.target_eviction == 0.5
    pc = PolicyCache(tiny_llama.model, policy)
    with torch.no_grad():
        pc.forward(_ids(tiny_llama, 64))
        keys = [layer.keys[0].clone() for layer in pc.cache.layers]  # (H, 64, hd) before eviction
        pc.evict()
    assert pc.eviction_rate() == pytest.approx(0.5)
    for layer, k in enumerate(keys):
        for h in range(k.shape[0]):
            rest = 2 + k[h, 2:].norm(dim=-1).argsort()[:30]  # the budget of 32 less the two sinks
            assert set(pc.positions[layer][h].tolist()) == {0, 1} | set(rest.tolist())


def _decoded_ids(lm, run) -> tuple[list[int], object]:
    """The tokens fed back one at a time while ``run()`` generates (every new token but the last)."""
    fed: list[int] = []

    def grab(_module, _args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            fed.append(int(ids[0, 0]))

    h = lm.model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        gen = run()
        _text(gen)
    finally:
        h.remove()
    return fed, gen


@pytest.mark.parametrize("slots", [0, 8])
def test_stream_with_the_full_cache_equals_the_chunked_policy_path_token_for_token(tiny_llama, slots):
    messages = [{"role": "user", "content": "Tell me about the harbour, the boats and the tides, please."}]

    def run(policy, **kw):
        cache = _memory_cache(tiny_llama, slots) if slots else None
        return lambda: stream(tiny_llama, messages, policy, past_key_values=cache, prefix_len=slots,
                              max_new_tokens=12, **kw)

    fast_ids, fast = _decoded_ids(tiny_llama, run(FullCache()))
    slow_ids, slow = _decoded_ids(tiny_llama, run(ChunkedFullCache(), chunk=8))
    assert len(fast_ids) >= 3 and fast_ids == slow_ids
    assert fast.stats.new_tokens == slow.stats.new_tokens
    for s in (fast.stats, slow.stats):
        assert s.policy == "full" and s.eviction_rate == 0.0 and s.prefill_s > 0 and s.first_token_at > 0
    # The full cache reports what it holds: memories, prompt and every new token fed back.
    assert fast.stats.kv_bytes_held == slow.stats.kv_bytes_held
    held = slots + fast.stats.prompt_tokens + fast.stats.new_tokens - 1
    assert sum(fast.stats.kv_bytes_held) == held * tiny_llama.kv_bytes_per_token
