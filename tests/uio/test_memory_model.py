"""The UIO memory model on tiny random Llama and Qwen2 (GQA, Qwen2's biases), CPU, fp32."""
import pytest
import torch

from tests.conftest import _tiny
from uio.adapter import UIOAdapter
from uio.decoder import (IncrementalReader, WindowExceeded, build_cache, logits_over_memories,
                         stream_over_memories)
from uio.encoder import Encoder, encoder_inputs
from uio.memory import Memory, MemoryConfig, MemoryMismatch, visible_prefix

L, M = 64, 8  # tiny segment length and slots: ratio 8x, c_i = 8 (i + 1)
CFG = MemoryConfig(segment_len=L, num_mem=M, enc_rank=4, enc_alpha=8, head_rank=4, head_alpha=8)


@pytest.fixture(params=["llama", "qwen2"])
def lm(request, tokenizer):
    return _tiny(request.param, tokenizer)  # fresh per test: an adapter modifies the model in place


@pytest.fixture
def encoder(lm):
    return Encoder(UIOAdapter(lm, CFG).randomize_(std=0.05), batch_size=3)


def rand_ids(n, seed):
    return torch.randint(10, 2000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_no_memories_decoder_equals_plain_base_model(lm):
    ids = torch.tensor([rand_ids(30, 1)])
    plain = lm.model(ids).logits
    UIOAdapter(lm, CFG).randomize_(std=0.5)  # LoRAs present and far from zero: must not act
    assert torch.allclose(logits_over_memories(lm, [], ids), plain, atol=1e-5)


def test_mask_and_positions_follow_the_interleaving_rule():
    seen, pos, slots = encoder_inputs([L, 20], M, torch.device("cpu"))
    assert slots == [M, M]
    assert visible_prefix(L, M) == [8 * (i + 1) for i in range(M)]
    for i, c in enumerate(visible_prefix(L, M)):
        row = seen[0, L + i]
        assert row[:c].all() and not row[c:L].any() and row[L + i] and row.sum() == c + 1
        assert pos[0, L + i] == c
    # A 20-token segment: prefixes scaled to its length, the last slot sees it all, padding unseen.
    c20 = visible_prefix(20, M)
    assert c20[-1] == 20 and pos[1, L:].tolist() == c20
    assert not seen[1, L:, 20:L].any() and not seen[1, :20, 20:].any()
    assert torch.equal(seen[0, :L, :L], torch.ones(L, L, dtype=torch.bool).tril())


def test_slot_changes_only_when_a_visible_token_changes(encoder):
    base = rand_ids(L, 2)
    ref = encoder.compress([base])
    for p in (5, 30, 63):
        changed = list(base)
        changed[p] = (changed[p] + 7) % 2000 + 10
        mem = encoder.compress([changed])
        diff = (mem.keys - ref.keys).abs().amax(dim=(0, 2, 3)) + (mem.values - ref.values).abs().amax(dim=(0, 2, 3))
        for i, c in enumerate(visible_prefix(L, M)):
            if p >= c:
                assert diff[i] == 0, f"slot {i} (sees [0,{c})) changed when token {p} changed"
            else:
                assert diff[i] > 1e-6, f"slot {i} (sees [0,{c})) ignored token {p}"


def test_batched_compression_equals_one_by_one(encoder):
    segs = [rand_ids(L, s) for s in range(4)] + [rand_ids(23, 9), rand_ids(5, 10)]
    mem = encoder.compress(segs)
    assert mem.slots == [M, M, M, M, M, 5]  # a segment shorter than M keeps one slot per token
    assert mem.keys.shape[:2] == (2, 5 * M + 5)
    for i, seg in enumerate(segs):
        alone = encoder.compress([seg])
        got = mem.select([i])
        assert torch.allclose(got.keys, alone.keys, atol=1e-5)
        assert torch.allclose(got.values, alone.values, atol=1e-5)


def _pre_rope_kv(lm, ids):
    """Pre-RoPE keys and values of every layer for a direct forward of ``ids``."""
    ks, vs = [], []
    hooks = []
    for layer in lm.model.model.layers:
        hooks.append(layer.self_attn.k_proj.register_forward_hook(lambda m, i, o: ks.append(o[0])))
        hooks.append(layer.self_attn.v_proj.register_forward_hook(lambda m, i, o: vs.append(o[0])))
    with torch.no_grad():
        lm.model(ids)
    for h in hooks:
        h.remove()
    cfg = lm.model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    return (torch.stack(ks).unflatten(-1, (cfg.num_key_value_heads, hd)),
            torch.stack(vs).unflatten(-1, (cfg.num_key_value_heads, hd)))


def test_rope_reassignment_matches_direct_forward(lm):
    UIOAdapter(lm, CFG).randomize_(std=0.5)  # present but disabled in the decoder
    a, x, y = rand_ids(13, 3), rand_ids(21, 4), rand_ids(9, 5)
    ids = torch.tensor([a + x + y])
    direct = lm.model(ids).logits[:, -len(y):]
    keys, values = _pre_rope_kv(lm, torch.tensor([a + x]))
    mem_a = Memory(keys[:, :13], values[:, :13], [0], [13])
    mem_x = Memory(keys[:, 13:], values[:, 13:], [1], [21])  # placed at positions 13..33
    got = logits_over_memories(lm, [mem_a, mem_x], torch.tensor([y]))
    assert torch.allclose(got, direct, atol=1e-4), (got - direct).abs().max()
    swapped = logits_over_memories(lm, [mem_x, mem_a], torch.tensor([y]))
    assert not torch.allclose(swapped, direct, atol=1e-3)  # order and positions matter


def test_incremental_reading_keeps_a_bounded_cache_and_matches_batch(encoder):
    stream = rand_ids(10 * L + 17, 6)
    reader = IncrementalReader(encoder)
    g = torch.Generator().manual_seed(0)
    i = 0
    while i < len(stream):
        step = int(torch.randint(1, 50, (1,), generator=g))
        reader.feed(stream[i:i + step])
        i += step
        assert len(reader.raw) < L
    assert reader.memory.num_slots == 10 * M and len(reader.raw) == 17
    batch = encoder.compress([stream[j * L:(j + 1) * L] for j in range(10)])
    assert torch.allclose(reader.memory.keys, batch.keys, atol=1e-5)
    assert torch.allclose(reader.memory.values, batch.values, atol=1e-5)
    cache, length = reader.cache()
    assert length == 10 * M + 17 and cache.get_seq_length() == length
    # The cache answers like memories + raw tokens read in one go.
    nxt = torch.tensor([[42]])
    out = encoder.lm.model(input_ids=nxt, past_key_values=cache, position_ids=torch.tensor([[length]]),
                           cache_position=torch.tensor([length])).logits
    direct = logits_over_memories(encoder.lm, [batch], torch.tensor([reader.raw + [42]]))[:, -1:]
    assert torch.allclose(out, direct, atol=1e-4)


def test_adapter_and_memory_files_round_trip(encoder, tmp_path, tokenizer):
    lm = encoder.lm
    segs = [rand_ids(L, 7), rand_ids(40, 8)]
    mem = encoder.compress(segs, segment_ids=[3, 4], token_spans=[(0, 64), (64, 104)])
    encoder.adapter.save(tmp_path / "a.safetensors")
    mem.save(tmp_path / "m.safetensors")
    assert not list(tmp_path.glob("*.part"))

    twin = _tiny(lm.model.config.model_type, tokenizer)  # same seed: the same base weights
    again = UIOAdapter.load(twin, tmp_path / "a.safetensors")
    assert again.fingerprint == encoder.adapter.fingerprint and again.config == CFG
    remade = Encoder(again).compress(segs, segment_ids=[3, 4])
    assert torch.allclose(remade.keys, mem.keys, atol=1e-6)

    loaded = Memory.load(tmp_path / "m.safetensors", expect_fingerprint=again.fingerprint)
    assert torch.equal(loaded.keys, mem.keys) and torch.equal(loaded.values, mem.values)
    assert loaded.segment_ids == [3, 4] and loaded.token_spans == [(0, 64), (64, 104)] and loaded.ratio == 8
    assert loaded.select([4]).num_slots == M

    other = _tiny(lm.model.config.model_type, tokenizer)
    with torch.no_grad():
        other.model.model.embed_tokens.weight.add_(0.1)  # a different base model
    with pytest.raises(MemoryMismatch, match="was trained for"):
        UIOAdapter.load(other, tmp_path / "a.safetensors")
    with pytest.raises(MemoryMismatch, match="re-ingest"):
        Memory.load(tmp_path / "m.safetensors", expect_fingerprint="0" * 64)
    with pytest.raises(MemoryMismatch, match="re-ingest"):
        build_cache(lm, [mem], fingerprint="f" * 64)


def test_memories_plus_prompt_beyond_the_window_are_refused(lm):
    cfg = lm.model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    big = Memory(torch.zeros(2, 4090, 2, hd), torch.zeros(2, 4090, 2, hd), [0], [4090])
    with pytest.raises(WindowExceeded, match="exceeds"):
        logits_over_memories(lm, [big], torch.tensor([rand_ids(10, 1)]))
    with pytest.raises(ValueError, match="exceeds"):
        stream_over_memories(lm, [big], [{"role": "user", "content": "hi"}], max_new_tokens=20)


def test_generation_over_memories_streams_and_leaves_memory_untouched(encoder):
    mem = encoder.compress([rand_ids(L, s) for s in range(3)])
    before = mem.keys.clone(), mem.values.clone()
    gen = stream_over_memories(encoder.lm, [mem], [{"role": "user", "content": "Summarise."}],
                               max_new_tokens=6, fingerprint=encoder.adapter.fingerprint)
    text = "".join(gen)
    assert gen.stats.prefix_len == 3 * M and gen.stats.new_tokens >= 1 and text
    assert torch.equal(mem.keys, before[0]) and torch.equal(mem.values, before[1])
