"""The fast paths of issue 10 give the same answers as the plain ones: memory files read through
mmap, the byte-bounded LRU, checksums hashed once per process, logits for the last position only,
the int8 encoder, and the time split of a question."""
import os
import time

import pytest
import torch
from safetensors.torch import load as load_bytes

from storage import CorruptMemory, MemoryFiles
from storage.files import forget_verified, sha256_file
from tests.conftest import _tiny, make_pdf
from tome import Config
from uio.adapter import UIOAdapter
from uio.decoder import build_cache, rotate_keys
from uio.encoder import Encoder
from uio.generate import stream
from tome.lru import ByteLRU
from uio.memory import Memory, MemoryConfig
from uio.quant import int8_encoder

CFG = MemoryConfig(segment_len=64, num_mem=8)
SEGMENTS = [list(range(100, 164)), list(range(300, 340)), list(range(500, 564))]


@pytest.fixture(scope="module")
def adapter(tokenizer):
    return UIOAdapter(_tiny("llama", tokenizer), CFG).randomize_(seed=3)


@pytest.fixture(scope="module")
def memory(adapter):
    return Encoder(adapter, batch_size=2).compress(SEGMENTS, token_spans=[(0, 64), (64, 104), (104, 168)])


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of every (layer, slot) vector of a vs b."""
    return torch.nn.functional.cosine_similarity(a.flatten(2).float(), b.flatten(2).float(), dim=-1)


def test_mmap_load_equals_eager_load(memory, tmp_path):
    path = tmp_path / "m.safetensors"
    memory.save(path)
    eager = load_bytes(path.read_bytes())  # the whole file read into RAM, then parsed
    mapped = Memory.load(path, expect_fingerprint=memory.fingerprint)
    assert torch.equal(mapped.keys, eager["keys"]) and torch.equal(mapped.values, eager["values"])
    assert torch.equal(mapped.keys, memory.keys) and torch.equal(mapped.values, memory.values)
    assert (mapped.segment_ids, mapped.slots, mapped.token_spans, mapped.ratio) == \
        (memory.segment_ids, memory.slots, memory.token_spans, memory.ratio)
    assert mapped.select(mapped.segment_ids) is mapped  # all segments in order: no gather copy


def test_lru_evicts_least_recently_used_by_bytes():
    lru = ByteLRU(1000, size=lambda t: t.numel() * t.element_size())
    a, b, c = torch.zeros(100), torch.zeros(100), torch.zeros(50)  # 400, 400, 200 bytes
    lru.put("a", a)
    lru.put("b", b)
    assert lru.nbytes == 800 and lru.get("a") is a  # a is now the most recent
    lru.put("c", c)  # 1000 bytes: fits exactly
    assert lru.keys() == ["b", "a", "c"] and lru.nbytes == 1000
    lru.put("d", torch.zeros(25))  # 100 more bytes: the least recently used (b) goes
    assert lru.keys() == ["a", "c", "d"] and lru.nbytes == 700 and lru.get("b") is None
    lru.put("huge", torch.zeros(300))  # larger than the whole cache: not kept, nothing evicted for it
    assert "huge" not in lru and lru.keys() == ["a", "c", "d"]
    lru.put("a", torch.zeros(10))  # replacing a value re-counts its bytes
    assert lru.nbytes == 340 and lru.keys() == ["c", "d", "a"]


def test_memory_cache_is_configured_in_megabytes():
    assert Config.from_env({"TOME_MEMORY_CACHE_MB": "64"}).memory_cache_mb == 64
    assert Config.from_env({"TOME_INT8_INGEST": "1"}).int8_ingest is True
    assert Config.from_env({}).int8_ingest is False and not Config.from_env({}).ray_address


def test_checksum_is_verified_once_per_file_and_corruption_is_caught_on_first_load(memory, tmp_path):
    files = MemoryFiles(tmp_path)
    forget_verified()
    good, bad = files.path("ab/good.safetensors"), files.path("ab/bad.safetensors")
    memory.save(good)
    memory.save(bad)
    sums = {p: sha256_file(p) for p in (good, bad)}
    # a file damaged before its first load is refused
    data = bytearray(bad.read_bytes())
    data[-7] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptMemory, match="corrupt"):
        files.verify("ab/bad.safetensors", sums[bad])
    assert not files.verified("ab/bad.safetensors", sums[bad])
    # a good file is hashed on its first load only: damage that leaves size, mtime and inode alone
    # (which no writer of memory files does) is not seen again, showing no second hash happened
    assert files.verify("ab/good.safetensors", sums[good]) == good
    assert files.verified("ab/good.safetensors", sums[good])
    st = good.stat()
    with open(good, "r+b") as f:
        f.seek(-7, os.SEEK_END)
        f.write(b"\x00")
    os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files.verify("ab/good.safetensors", sums[good]) == good
    # a file replaced the way Tome writes them (temporary name + rename: new inode) is hashed again
    tmp = good.with_name("x.part")
    tmp.write_bytes(good.read_bytes())
    os.replace(tmp, good)
    with pytest.raises(CorruptMemory, match="corrupt"):
        files.verify("ab/good.safetensors", sums[good])
    good.unlink()
    with pytest.raises(CorruptMemory, match="missing"):
        files.verify("ab/good.safetensors", sums[good])


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


def test_prefill_computes_logits_for_the_last_position_only(adapter, tokenizer):
    lm = adapter.lm
    ids = torch.randint(5, 1000, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = lm.model(ids).logits
        last = lm.model(ids, logits_to_keep=1).logits
    assert last.shape[1] == 1 and torch.allclose(last, full[:, -1:], atol=1e-5)
    # the answer path's prefill asks for exactly that
    seen = []

    def grab(_m, args, kwargs, out):
        seen.append((kwargs.get("logits_to_keep"), out.logits.shape[1]))

    cache, m = build_cache(lm, [Encoder(adapter).compress(SEGMENTS[:1])])
    h = lm.model.register_forward_hook(grab, with_kwargs=True)
    try:
        gen = stream(lm, [{"role": "user", "content": "Where is the lantern?"}], past_key_values=cache,
                     prefix_len=m, max_new_tokens=3)
        "".join(gen)
    finally:
        h.remove()
    assert seen[0] == (1, 1) and gen.stats.prompt_tokens > 1
    assert gen.stats.prefill_s > 0 and gen.stats.first_token_at > 0


def test_prefill_time_spans_every_chunk_of_a_chunked_prompt(adapter):
    # Under a cache policy the prompt is read in chunks; all of them are the prefill, not the first decode.
    from uio.cache import resolve_policy

    lm = adapter.lm
    spans: list[list[float]] = []
    pre = lm.model.register_forward_pre_hook(lambda *a: spans.append([time.perf_counter()]))
    post = lm.model.register_forward_hook(lambda *a: spans[-1].append(time.perf_counter()))
    try:
        gen = stream(lm, [{"role": "user", "content": "Where is the lantern? " * 6}],
                     resolve_policy("streaming", 0.5), max_new_tokens=3, chunk=8)
        "".join(gen)
    finally:
        pre.remove()
        post.remove()
    chunks = -(-gen.stats.prompt_tokens // 8)
    assert chunks >= 3 and len(spans) >= chunks
    assert gen.stats.prefill_s == pytest.approx(spans[chunks - 1][1] - spans[0][0], abs=2e-3)
    assert gen.stats.prefill_s > spans[0][1] - spans[0][0]  # more than the first chunk alone


def test_encoder_never_computes_logits(adapter):
    calls = []
    h = adapter.lm.model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        Encoder(adapter).compress(SEGMENTS)
    finally:
        h.remove()
    assert calls == []


def test_int8_memories_are_close_to_fp32(adapter, memory):
    q = int8_encoder(adapter, batch_size=2)
    mlp, mlp8 = adapter.lm.model.model.layers[0].mlp, q.lm.model.model.layers[0].mlp
    assert isinstance(mlp8.gate_proj, torch.ao.nn.quantized.dynamic.Linear)
    assert type(mlp8.down_proj) is torch.nn.Linear and mlp8.down_proj.weight is mlp.down_proj.weight  # kept, shared
    assert type(mlp.gate_proj) is torch.nn.Linear  # the original is untouched
    mem8 = q.compress(SEGMENTS, token_spans=memory.token_spans)
    assert mem8.fingerprint == memory.fingerprint and mem8.slots == memory.slots
    assert cosines(mem8.keys, memory.keys).min() > 0.95
    assert cosines(mem8.values, memory.values).min() > 0.95
    assert not torch.equal(mem8.keys, memory.keys)  # it really ran in int8


PAGES = [f"Page {i}. " + "The keeper lit the lantern at the north wall before the storm. " * 12 for i in range(1, 5)]


def test_ask_reports_where_the_time_to_first_token_went(tome_tiny, tmp_path):
    doc = tome_tiny.ingest(make_pdf(tmp_path / "b.pdf", PAGES)).document
    tome_tiny.memories.cache.clear()
    forget_verified()
    final = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1]
    t = final.stats["timing"]
    phases = ("lookup", "read", "select", "assembly", "prefill", "first_decode")
    assert set(phases) <= set(t) and all(t[p] >= 0 for p in phases)
    assert t["read"] > 0 and t["prefill"] > 0 and t["assembly"] > 0
    assert sum(t[p] for p in phases) <= t["ttft_s"]
    again = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1].stats["timing"]
    assert "read" not in again  # the memories came from the LRU
    plain = list(tome_tiny.ask([doc.id], "Who lit the lantern?"))[-1].stats["timing"]
    assert "assembly" not in plain and plain["prefill"] > 0
    assert sum(v for k, v in plain.items() if k != "ttft_s") <= plain["ttft_s"]


def test_int8_ingestion_through_the_service(tmp_path, db_url, tokenizer):
    from tests.conftest import make_tome

    t = make_tome(tmp_path, db_url, _tiny("llama", tokenizer), max_new_tokens=4, segment_len=64,
                  int8_ingest=True, compressor="uio")  # the int8 copy serves the UIO encoder
    try:
        r = t.ingest(make_pdf(tmp_path / "b.pdf", PAGES))
        assert r.ok, r.error
        mem8 = t.memory(r.document)
        fp32 = Encoder(t.adapter).compress([s.token_ids for s in _segments(t, r.document)])
        assert cosines(mem8.keys, fp32.keys).min() > 0.95
        assert list(t.ask([r.document.id], "Who?", mode="compressed"))[-1].done
    finally:
        t.store.close()


def _segments(t, doc):
    from ingest import split_segments, read_document

    pages = read_document(t.config.uploads_path / f"{doc.sha256}.pdf").pages
    return split_segments(pages, t.lm.tokenizer, t.config.segment_len)


def test_int8_encoder_of_a_bf16_model_returns_bf16_memories_close_to_its_own(tokenizer):
    from dataclasses import replace

    lm = _tiny("qwen2", tokenizer)
    lm = replace(lm, model=lm.model.to(torch.bfloat16), dtype=torch.bfloat16)
    adapter = UIOAdapter(lm, CFG).randomize_(seed=4)
    ref = Encoder(adapter).compress(SEGMENTS)
    mem8 = int8_encoder(adapter).compress(SEGMENTS)
    assert mem8.keys.dtype == torch.bfloat16 and mem8.fingerprint == ref.fingerprint
    assert cosines(mem8.keys, ref.keys).min() > 0.95 and cosines(mem8.values, ref.values).min() > 0.95
    assert next(adapter.lm.model.parameters()).dtype == torch.bfloat16  # the original stays bf16


def test_memory_budget_caps_the_slots_a_compressed_answer_attends_to(tome_tiny, tmp_path):
    from dataclasses import replace

    doc = tome_tiny.ingest(make_pdf(tmp_path / "b.pdf", PAGES)).document
    full = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1]
    tome_tiny.config = replace(tome_tiny.config, memory_budget=16)
    capped = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1]
    assert full.stats["prefix_len"] > 16 >= capped.stats["prefix_len"] > 0
    assert capped.truncated and len(capped.sources) < len(full.sources)


def test_default_memory_budget_is_sized_to_the_model_on_cpu(tome_tiny, smollm2, qwen):
    from dataclasses import replace

    from uio.model import flat_ttft_slots

    assert Config().memory_budget == -1  # auto
    # The rule: parameters outside the embedding tables / (8 * head_dim * heads * layers), floored.
    c = smollm2.model.config
    params = sum(p.numel() for n, p in smollm2.model.named_parameters()
                 if "embed_tokens" not in n and "lora_" not in n)  # other tests may have injected an adapter
    assert flat_ttft_slots(smollm2, floor=1) == params // (8 * 64 * c.num_attention_heads * c.num_hidden_layers)
    assert (flat_ttft_slots(smollm2), flat_ttft_slots(qwen)) == (768, 2080)  # Qwen's untied lm_head not counted
    assert tome_tiny.memory_budget() == 512  # the floor: a tiny model would otherwise get almost nothing
    before = flat_ttft_slots(tome_tiny.lm, floor=1)
    tome_tiny.adapter_for()  # injects LoRA weights into the model: not part of an answer's cost
    assert any("lora_" in n for n, _ in tome_tiny.lm.model.named_parameters())
    assert flat_ttft_slots(tome_tiny.lm, floor=1) == before
    for fixed in (0, 16):
        tome_tiny.config = replace(tome_tiny.config, memory_budget=fixed)
        assert tome_tiny.memory_budget() == fixed


def test_ingest_ray_flag_takes_an_address_or_leaves_the_file_alone(tmp_path):
    from app import _parser, _ray_address_or_file

    book = make_pdf(tmp_path / "b.pdf", PAGES[:1])
    parse = lambda *argv: _ray_address_or_file(_parser().parse_args(list(argv)))  # noqa: E731
    a = parse("ingest", "--ray", str(book))
    assert a.ray == "local" and a.files == [book]
    a = parse("ingest", "--ray", "ray://head:10001", "--ray-actors", "4", "--int8", str(book))
    assert (a.ray, a.ray_actors, a.int8, a.files) == ("ray://head:10001", 4, True, [book])
    a = parse("ingest", str(book))
    assert a.ray is None and a.int8 is None and a.files == [book]
