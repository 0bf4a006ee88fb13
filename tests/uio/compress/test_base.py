"""The compressor interface on tiny random models: slot counts, sinks, keep-all exactness, identity, refusal."""
from dataclasses import replace

import pytest
import torch

from uio.compress import COMPRESSORS, identity, make_compressor, slots_at_ratio, storage_dtype
from uio.decoder import logits_over_memories
from uio.memory import Memory, MemoryMismatch

SCORING = ["kvzip", "snapkv", "keynorm", "streaming"]


def tokens(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 5000, (n,), generator=g).tolist()


def test_registry_lists_every_name_once_and_refuses_unknown():
    assert {"keynorm", "kvzip", "snapkv", "streaming", "uio"} <= set(COMPRESSORS)
    assert all(cls.name == name for name, cls in COMPRESSORS.items())
    assert len({cls for cls in COMPRESSORS.values()}) == len(COMPRESSORS)
    with pytest.raises(ValueError, match="unknown compressor"):
        make_compressor("h2o", 8)
    c = make_compressor("kvzip", 32, n_sink=2)
    assert (c.ratio, c.n_sink, c.version) == (32, 2, "2")
    assert c.params() == {"n_sink": 2, "store": "16bit", "chunk_size": 2048, "pool": 3}  # pooled at 32x


def test_slot_rule():
    assert slots_at_ratio(1024, 8) == 128 and slots_at_ratio(1024, 32) == 32
    assert slots_at_ratio(100, 8) == 13 and slots_at_ratio(100, 32) == 4  # ceil
    assert slots_at_ratio(5, 32) == 1 and slots_at_ratio(1, 8) == 1 and slots_at_ratio(7, 1) == 7
    with pytest.raises(ValueError):
        slots_at_ratio(0, 8)


@pytest.mark.parametrize("name", SCORING)
@pytest.mark.parametrize("ratio", [8, 32])
def test_exact_slot_counts_per_segment_layer_and_head(tiny_qwen, name, ratio):
    lengths = [256, 100, 5, 1]
    segs = [tokens(n, i) for i, n in enumerate(lengths)]
    mem = make_compressor(name, ratio).compress(tiny_qwen, segs, segment_ids=[3, 4, 5, 6],
                                                token_spans=[(0, 256), (256, 356), (356, 361), (361, 362)])
    expect = [slots_at_ratio(n, ratio) for n in lengths]
    assert mem.slots == expect == ([32, 13, 1, 1] if ratio == 8 else [8, 4, 1, 1])
    # (layers, slots, kv_heads, head_dim): every layer and KV head holds the same number of slots
    assert mem.keys.shape == mem.values.shape == (2, sum(expect), 2, 16)
    assert mem.segment_ids == [3, 4, 5, 6] and mem.token_spans[1] == (256, 356) and mem.ratio == ratio
    assert mem.keys.dtype == torch.float16  # 16-bit storage for a float32 model
    assert torch.isfinite(mem.keys).all() and torch.isfinite(mem.values).all()


@pytest.mark.parametrize("name", SCORING)
def test_sinks_are_always_kept_in_every_layer_and_head(tiny_llama, name):
    ids = tokens(200, 1)
    comp = make_compressor(name, 4, store="model")  # 50 slots: the 4 sinks + 46 chosen
    mem = comp.compress(tiny_llama, [ids])
    pre = comp.prefill(tiny_llama, ids)
    assert mem.slots == [50]
    # slots are in document order, so the sinks are the first four slots of every head of every layer
    assert torch.equal(mem.keys[:, :4], pre.keys[:, :4]) and torch.equal(mem.values[:, :4], pre.values[:, :4])
    assert (mem.positions[:, :4] == torch.arange(4)[None, :, None]).all()
    # a small budget (a short last segment) spends at most an eighth of its slots on sinks
    assert [comp.sinks(k) for k in (2, 7, 8, 16, 32, 128)] == [0, 0, 1, 2, 4, 4]


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen"])
@pytest.mark.parametrize("name", SCORING)
def test_keep_all_memory_gives_the_full_context_logits(request, model, name):
    lm = request.getfixturevalue(model)
    seg, nxt = tokens(48, 2), tokens(6, 3)
    full = lm.model(torch.tensor([seg + nxt])).logits[0, len(seg):]
    mem = make_compressor(name, 1, store="model").compress(lm, [seg])
    assert mem.slots == [48]
    got = logits_over_memories(lm, [mem], torch.tensor([nxt]), fingerprint=mem.fingerprint)[0]
    torch.testing.assert_close(got, full, atol=1e-4, rtol=1e-4)
    # 16-bit storage (the default) stays close; build_cache casts back to the model's dtype
    mem16 = make_compressor(name, 1).compress(lm, [seg])
    assert mem16.keys.dtype == torch.float16
    got16 = logits_over_memories(lm, [mem16], torch.tensor([nxt]))[0]
    assert got16.dtype == full.dtype
    torch.testing.assert_close(got16, full, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", SCORING)
def test_deterministic_memory_and_fingerprint(tiny_qwen, name):
    segs = [tokens(120, 4), tokens(64, 5)]
    a = make_compressor(name, 8).compress(tiny_qwen, segs)
    b = make_compressor(name, 8).compress(tiny_qwen, segs)
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) and a.slots == b.slots
    assert a.fingerprint == b.fingerprint == identity(make_compressor(name, 8), tiny_qwen)
    assert len(a.fingerprint) == 64


def test_fingerprints_differ_by_method_ratio_params_and_model(tiny_llama, tiny_qwen):
    fps = {identity(make_compressor(n, r), tiny_llama) for n in SCORING for r in (8, 32)}
    assert len(fps) == 8
    assert identity(make_compressor("kvzip", 8), tiny_llama) != identity(make_compressor("kvzip", 8, n_sink=2),
                                                                         tiny_llama)
    assert identity(make_compressor("kvzip", 8), tiny_llama) != identity(make_compressor("kvzip", 8), tiny_qwen)
    # query_block only bounds memory: the same scores, so the same identity
    assert identity(make_compressor("kvzip", 8), tiny_llama) == identity(make_compressor("kvzip", 8, query_block=7),
                                                                         tiny_llama)


def test_memory_of_another_compressor_is_refused_on_load(tiny_llama, tmp_path):
    kvzip, snap = make_compressor("kvzip", 8), make_compressor("snapkv", 8)
    mem = kvzip.compress(tiny_llama, [tokens(80, 6)], token_spans=[(0, 80)])
    mem.save(tmp_path / "m.safetensors")
    back = Memory.load(tmp_path / "m.safetensors", expect_fingerprint=identity(kvzip, tiny_llama))
    assert torch.equal(back.keys, mem.keys) and torch.equal(back.values, mem.values)
    assert back.keys.dtype == torch.float16 and back.token_spans == [(0, 80)] and back.ratio == 8
    with pytest.raises(MemoryMismatch):
        Memory.load(tmp_path / "m.safetensors", expect_fingerprint=identity(snap, tiny_llama))
    with pytest.raises(MemoryMismatch):
        Memory.load(tmp_path / "m.safetensors", expect_fingerprint=identity(make_compressor("kvzip", 32), tiny_llama))


def test_storage_dtype_rule(tiny_llama):
    assert storage_dtype(tiny_llama) == torch.float16
    assert storage_dtype(replace(tiny_llama, dtype=torch.bfloat16)) == torch.bfloat16
    assert storage_dtype(replace(tiny_llama, dtype=torch.float16)) == torch.float16
    assert storage_dtype(tiny_llama, "model") == torch.float32
    with pytest.raises(ValueError):
        storage_dtype(tiny_llama, "int8")


def test_progress_and_refusals(tiny_llama):
    seen = []
    make_compressor("keynorm", 8).compress(tiny_llama, [tokens(30), tokens(20)], progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 2), (2, 2)]
    with pytest.raises(ValueError):
        make_compressor("keynorm", 8).compress(tiny_llama, [])
    with pytest.raises(ValueError):
        make_compressor("keynorm", 8).compress(tiny_llama, [[]])


def test_pooled_selection_keeps_a_peak_s_neighbours():
    # One head, 16 tokens: a lone tall peak at 3, a span of three high tokens at 9..11. Unpooled top-3 (no sinks
    # at k=3) takes the peak and two of the span; pooled over 3 the whole span wins (its average mass is highest).
    scores = torch.zeros(1, 1, 16)
    scores[0, 0, 3] = 1.0
    scores[0, 0, 9:12] = torch.tensor([0.6, 0.7, 0.5])
    plain = make_compressor("kvzip", 8)
    assert plain.select(scores, 3).tolist() == [[[3, 9, 10]]]
    assert make_compressor("kvzip", 8, pool=3).select(scores, 3).tolist() == [[[9, 10, 11]]]
    assert torch.equal(scores[0, 0, 3], torch.tensor(1.0))  # the caller's scores are not pooled in place
    with pytest.raises(ValueError, match="odd"):
        make_compressor("kvzip", 8, pool=4).select(scores, 3)


def test_pool_is_part_of_the_identity_only_when_on(tiny_llama):
    plain = make_compressor("kvzip", 8)
    assert "pool" not in plain.params()  # memories made before the option keep their fingerprint
    assert identity(plain, tiny_llama) == identity(make_compressor("kvzip", 8, pool=1), tiny_llama)
    assert identity(plain, tiny_llama) != identity(make_compressor("kvzip", 8, pool=3), tiny_llama)
    # KVzip and kvzip-fast pool over 3 tokens at 32x by default (AUTO_POOL); the baselines never unless asked
    assert make_compressor("kvzip", 32).params()["pool"] == 3 and make_compressor("kvzip-fast", 32).pool_kernel() == 3
    assert make_compressor("kvzip-fast", 8).pool_kernel() == 0
    assert identity(make_compressor("kvzip", 32), tiny_llama) == identity(make_compressor("kvzip", 32, pool=3),
                                                                          tiny_llama)
    assert identity(make_compressor("kvzip", 32, pool=0), tiny_llama) != identity(make_compressor("kvzip", 32),
                                                                                  tiny_llama)
    assert all(make_compressor(n, 32).pool_kernel() == 0 for n in ("snapkv", "keynorm", "streaming"))
    with pytest.raises(ValueError, match="pool must be"):
        make_compressor("kvzip", 8, pool=-5).pool_kernel()


def test_kvzip_fast_pools_on_the_mass_of_its_log_scores():
    # kvzip-fast's scores rank like log scores: exp() keeps the order, and a tall peak dominates its window:
    # pooled, the peak and its two neighbours outrank the flatter bump at 4..6.
    fast = make_compressor("kvzip-fast", 8)
    s = torch.tensor([[[0.0, 0.0, 5.0, 0.0, 1.0, 1.5, 1.0, 0.0]]])
    m = fast.mass(s)
    assert torch.equal(m.argsort(-1), s.argsort(-1)) and m.max() == 1.0
    assert make_compressor("kvzip-fast", 8, pool=3).select(s, 3).tolist() == [[[1, 2, 3]]]


def _greedy_capped(row: list[float], k: int, span: int, cap: int) -> list[int]:
    """The slow reference: walk tokens best first, skip one whose window already holds ``cap``."""
    taken, per = [], {}
    for i in sorted(range(len(row)), key=lambda i: (-row[i], i)):
        if per.get(i // span, 0) < cap and len(taken) < k:
            taken.append(i)
            per[i // span] = per.get(i // span, 0) + 1
    return sorted(taken)


def test_span_cap_keeps_the_best_within_each_windows_share():
    from uio.compress.base import capped_topk

    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 2, 100, generator=g)
    scores[..., :20] += 1.0  # an opening that would take every slot uncapped
    got = capped_topk(scores, 12, 16, 3).sort(-1).values
    for idx in range(6):
        row = scores.view(6, 100)[idx].tolist()
        assert got.view(6, 12)[idx].tolist() == _greedy_capped(row, 12, 16, 3)
    assert ((got < 16).sum(-1) == 3).all()  # the opening's window is held to its cap
    # Through a compressor: the cap changes the identity only when on; sinks stay; short segments get a looser cap.
    c = make_compressor("kvzip", 32, span_cap=0.25)
    assert c.params()["span_cap"] == 0.25 and "span_cap" not in make_compressor("kvzip", 32).params()
    s = torch.rand(2, 2, 1024, generator=g)
    s[..., :32] += 1.0
    index = c.select(s, 32)
    assert ((index < 32).sum(-1) == 8).all() and (index[..., :4] == torch.arange(4)).all()
    assert c.window_slots(4, 100) == 2  # 100 tokens = 3 full windows of 32: 1 a window (25 % of 4) could not fill 4
    with pytest.raises(ValueError, match="span_cap"):
        make_compressor("kvzip", 32, span_cap=1.5).select(s, 32)


# -- share: a group of segments splits one budget ---------------------------------------------------------
def test_share_budget_gives_the_slots_to_the_segment_whose_tokens_win():
    from uio.compress.base import share_budget

    quiet, loud = torch.zeros(2, 2, 64), torch.ones(2, 2, 64)  # every head prefers the second segment
    assert share_budget([quiet, loud], [8, 8], 0.25, lambda k: 0) == [2, 14]  # the floor: ceil(0.25 * 8)
    assert share_budget([loud, quiet], [8, 8], 0.0, lambda k: 0) == [15, 1]  # floor 0 still keeps 1
    # sinks are each segment's own: the first token of each wins nothing from the ranking but is kept
    assert share_budget([quiet, loud], [8, 8], 0.25, lambda k: 1) == [2, 14]
    # a segment never gets more slots than tokens; the floor of the quiet one is paid by the others
    short = torch.ones(2, 2, 5) * 2
    assert share_budget([quiet, short, loud], [8, 1, 8], 0.25, lambda k: 0) == [2, 4, 11]
    # half the heads prefer each: an even split; exact budget whatever the remainders
    mixed = torch.cat([torch.ones(1, 2, 64), torch.zeros(1, 2, 64)])
    assert share_budget([mixed, 1 - mixed], [8, 8], 0.25, lambda k: 0) == [8, 8]
    assert share_budget([loud], [8], 0.25, lambda k: 0) == [8]  # one segment: its own budget


@pytest.mark.parametrize("name", ["kvzip", "snapkv"])
def test_share_keeps_the_groups_total_and_does_not_depend_on_chunking(tiny_qwen, name):
    lengths = [256, 256, 256, 100]
    segs = [tokens(n, 10 + i) for i, n in enumerate(lengths)]
    comp = make_compressor(name, 8, share=2, store="model")
    assert comp.params()["share"] == 2 and "share" not in make_compressor(name, 8).params()
    assert identity(comp, tiny_qwen) != identity(make_compressor(name, 8, store="model"), tiny_qwen)
    whole = comp.compress(tiny_qwen, segs, segment_ids=[0, 1, 2, 3])
    # groups {0, 1} and {2, 3} each keep their own total: 32 + 32 and 32 + 13
    assert whole.slots[0] + whole.slots[1] == 64 and whole.slots[2] + whole.slots[3] == 45
    assert whole.slots != [32, 32, 32, 13]  # random tokens score unevenly
    assert all(s >= -(-slots_at_ratio(n, 8) // 4) for s, n in zip(whole.slots, lengths))  # the floor
    # compressed in two calls of one group each: the same memories
    a = comp.compress(tiny_qwen, segs[:2], segment_ids=[0, 1])
    b = comp.compress(tiny_qwen, segs[2:], segment_ids=[2, 3])
    assert a.slots + b.slots == whole.slots
    assert torch.equal(torch.cat([a.keys, b.keys], 1), whole.keys)
    assert torch.equal(torch.cat([a.positions, b.positions], 1), whole.positions)
    # a group of one segment: the per-segment rule
    alone = comp.compress(tiny_qwen, segs[:1], segment_ids=[0])
    assert alone.slots == [32]
    with pytest.raises(ValueError, match="share"):
        make_compressor(name, 8, share=0).compress(tiny_qwen, segs[:1])


def test_shared_compression_reports_progress_as_each_segment_is_scored(tiny_llama):
    """A group's split waits for its last segment, but progress (a worker's heartbeat) comes per segment."""
    segs = [tokens(64, 30 + i) for i in range(5)]
    seen, held = [], []

    class Hold:
        def __enter__(self):
            held.append(len(seen))

        def __exit__(self, *exc):
            return False

    mem = make_compressor("kvzip", 8, share=4).compress(tiny_llama, segs, progress=lambda d, n: seen.append((d, n)),
                                                       hold=Hold)
    assert seen == [(i, 5) for i in range(1, 6)] and held == [0, 1, 2, 3, 4]  # one hold per segment
    assert sum(mem.slots[:4]) == 32 and mem.slots[4] == 8  # groups {0..3} and {4}
