"""uio.decoder.build_context: text and memories in one cache, positions consecutive or spaced."""
import pickle

import pytest
import torch

from uio.compress import make_compressor
from uio.decoder import _layout, build_cache, build_context, rotate_keys
from uio.head_kv import HeadKV
from uio.memory import Memory, MemoryMismatch


def ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 200, (n,), generator=g).tolist()


def next_logits(lm, cache, length: int, tail: list[int]) -> torch.Tensor:
    pos = torch.arange(length, length + len(tail))[None]
    with torch.inference_mode():
        return lm.model(input_ids=torch.tensor([tail]), past_key_values=cache, position_ids=pos,
                        cache_position=pos[0]).logits[0]


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen"])
@pytest.mark.parametrize("positions", ["consecutive", "spaced"])
def test_text_memory_text_with_a_keep_all_memory_is_the_full_forward(request, model, positions):
    """[head text | keep-all memory of a segment | tail]: the same logits as the plain forward of all three.

    Only true where the memory holds the segment's K/V as read in context: segment first, so it is made
    from the segment alone and the head comes after it here.
    """
    lm = request.getfixturevalue(model)
    seg, mid, tail = ids(40, 1), ids(7, 2), ids(5, 3)
    mem = make_compressor("kvzip", 1, store="model").compress(lm, [seg], token_spans=[(0, 40)])
    cache, length = build_context(lm, [mem, mid], positions=positions)
    assert length == 47
    got = next_logits(lm, cache, length, tail)
    with torch.inference_mode():
        full = lm.model(torch.tensor([seg + mid + tail])).logits[0, -len(tail):]
    assert torch.allclose(got, full, atol=1e-4), (got - full).abs().max()


def test_head_text_then_memories_sit_where_the_segment_would(tiny_llama):
    """[head | keep-all memory of seg]: layer 0's K/V (which depend on no earlier layer) are those of the
    plain forward over head + seg; the memory was made from seg alone, at positions 0..n-1."""
    from transformers import DynamicCache

    lm = tiny_llama
    head, seg = ids(6, 4), ids(30, 5)
    mem = make_compressor("kvzip", 1, store="model").compress(lm, [seg], token_spans=[(0, 30)])
    cache, length = build_context(lm, [head, mem], positions="spaced")
    assert length == 36
    ref = DynamicCache(config=lm.model.config)
    with torch.inference_mode():
        lm.model(torch.tensor([head + seg]), past_key_values=ref, use_cache=True)
    assert torch.allclose(cache.layers[0].keys, ref.layers[0].keys, atol=1e-5)
    assert torch.allclose(cache.layers[0].values, ref.layers[0].values, atol=1e-6)


def test_spaced_positions_keep_each_heads_source_spacing(tiny_qwen):
    lm = tiny_qwen
    segs = [ids(64, 7), ids(40, 8)]
    mem = make_compressor("kvzip", 8, store="model").compress(lm, segs, token_spans=[(0, 64), (64, 104)])
    assert mem.slots == [8, 5] and mem.positions.shape == (2, 13, lm.model.config.num_key_value_heads)
    laid, span = _layout([mem], "spaced", None)
    pos = laid[0][0]
    assert span == 104
    # second segment's slots sit after the first segment's 64 tokens, at their own offsets
    assert torch.equal(pos[:, 8:], mem.positions[:, 8:].double() + 64)
    cache, length = build_context(lm, [mem], positions="spaced")
    assert length == 13
    shift = length - span  # the layout ends where the cache ends
    for layer in range(2):
        for h in range(pos.shape[2]):
            k = mem.keys[layer, :, h:h + 1]  # (slots, 1, hd)
            want = torch.stack([rotate_keys(lm, k[j:j + 1], int(pos[layer, j, h]) + shift)[0, 0]
                                for j in range(13)])  # (13, hd)
            assert torch.allclose(cache.layers[layer].keys[0, h], want, atol=1e-5)


def test_spaced_layout_is_scaled_into_the_room(tiny_qwen):
    mem = make_compressor("kvzip", 8, store="model").compress(tiny_qwen, [ids(64, 9)], token_spans=[(0, 64)])
    laid, span = _layout([ids(4, 1), mem], "spaced", room=36)
    assert span <= 36 and laid[0][1] == 4
    assert int(laid[1][0].max()) < 32


def test_memories_of_another_compressor_are_refused(tiny_llama):
    mem = make_compressor("kvzip", 8, store="model").compress(tiny_llama, [ids(32, 1)])
    with pytest.raises(MemoryMismatch):
        build_context(tiny_llama, [ids(3, 2), mem], fingerprint="f" * 64)


def test_positions_survive_select_concat_and_files(tmp_path, tiny_llama):
    mem = make_compressor("kvzip", 4, store="model").compress(tiny_llama, [ids(32, 1), ids(20, 2)],
                                                              segment_ids=[3, 4], token_spans=[(0, 32), (32, 52)])
    one = mem.select([4])
    assert torch.equal(one.positions, mem.positions[:, 8:])
    both = Memory.concat([mem.select([3]), one])
    assert torch.equal(both.positions, mem.positions)
    mem.save(tmp_path / "m.safetensors")
    back = Memory.load(tmp_path / "m.safetensors")
    assert torch.equal(back.positions, mem.positions) and back.segment_lengths() == [32, 20]
    # a memory without positions (the UIO encoder's) spreads its slots evenly over each segment
    bare = Memory(mem.keys, mem.values, mem.segment_ids, mem.slots, mem.token_spans, mem.fingerprint, mem.ratio)
    assert bare.source_positions()[0, :8, 0].tolist() == [3, 7, 11, 15, 19, 23, 27, 31]


def test_a_head_read_once_is_taken_from_the_model_after_and_never_written(tiny_qwen):
    """``reuse_head`` (and ``build_cache(head=)``): a leading text part is read by the model once and kept
    (``lm.head_kv``); the next cache opened by the same tokens takes it from there. Those caches are bitwise the
    one read afresh, and answering after them leaves the kept tensors as they were."""
    lm = tiny_qwen
    lm.head_kv.clear()
    head, seg, tail = ids(9, 6), ids(32, 7), ids(5, 8)
    mem = make_compressor("kvzip", 2, store="model").compress(lm, [seg], token_spans=[(0, 32)])
    fresh, n = build_context(lm, [head, mem])
    hits = lm.head_kv.hits
    first, n1 = build_context(lm, [head, mem], reuse_head=True)
    assert (len(lm.head_kv), lm.head_kv.hits) == (1, hits)  # read by the model and kept
    kept = [(k.clone(), v.clone()) for k, v in lm.head_kv.get(lm.head_kv.key(head, 0))]  # a hit too
    assert kept[0][0].shape[-2] == len(head)
    second, n2 = build_context(lm, [head, mem], reuse_head=True)
    assert lm.head_kv.hits == hits + 2 and n == n1 == n2 == len(head) + mem.num_slots
    for cache in (first, second):
        for a, b in zip(cache.layers, fresh.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    third, n3 = build_cache(lm, [mem], head=head)  # the answer path's layout "head": the same cache
    assert lm.head_kv.hits == hits + 3 and n3 == n
    for a, b in zip(third.layers, fresh.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert build_cache(lm, [], head=head)[1] == len(head)
    want = next_logits(lm, fresh, n, tail)
    assert torch.equal(next_logits(lm, first, n, tail), want)
    assert torch.equal(next_logits(lm, second, n, tail), want)
    assert torch.equal(next_logits(lm, third, n, tail), want)
    for (k, v), (k0, v0) in zip(lm.head_kv.get(lm.head_kv.key(head, 0)), kept):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    build_context(lm, [ids(9, 9), mem], reuse_head=True)  # another head: read, not taken
    assert (len(lm.head_kv), lm.head_kv.hits) == (2, hits + 5)
    build_context(lm, [mem, head], reuse_head=True)  # text after a memory depends on it: never kept
    assert len(lm.head_kv) == 2


def test_head_kv_keeps_the_last_heads_used_within_its_bytes():
    def layers(n: int) -> list:  # n bytes of keys (float32: 4 bytes each), no values
        return [(torch.zeros(n // 4), torch.zeros(0))]

    kv = HeadKV(capacity=200)
    for n in (1, 2):
        kv.put(kv.key([n], 0), layers(80))
    assert kv.get(kv.key([1], 0)) is not None  # 1 used last: 2 goes first
    kv.put(kv.key([3], 0), layers(80))
    assert kv.get(kv.key([2], 0)) is None and kv.get(kv.key([1], 5)) is None  # another start: another head
    assert (len(kv), kv.nbytes, kv.hits) == (2, 160, 1)
    copy = pickle.loads(pickle.dumps(kv))  # a model sent to a worker process: the store goes empty, not broken
    assert (len(copy), copy.capacity) == (0, 200)
    copy.put(copy.key([4], 0), layers(80))
    assert copy.get(copy.key([4], 0)) is not None and copy.hits == 1
