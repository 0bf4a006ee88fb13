"""Memories per compressor: recorded with their maker, never mixed, deterministic across restarts, collected."""
import pytest
import torch

from tests.conftest import make_pdf, make_tome

PAGES = [f"Page {i}. " + "The keeper lit the lamp at dusk and the ships passed the point. " * 10 for i in range(1, 5)]


def _files(t):
    root = t.config.memories_path
    return sorted(p.name for p in root.rglob("*.safetensors")) if root.exists() else []


def test_another_compressor_makes_its_own_memories_on_demand(tome_tiny, tmp_path):
    doc = tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    kvzip = tome_tiny.memory(doc)
    snap = tome_tiny.memory(doc, compressor="snapkv")
    assert kvzip.fingerprint == tome_tiny.memory_identity() != snap.fingerprint
    assert kvzip.slots == snap.slots  # equal slots per segment: the methods compare at equal cost
    assert not torch.equal(kvzip.keys, snap.keys)  # ... but keep different tokens
    made = {m.compressor: m for m in tome_tiny.memory_sets(doc.id)}
    assert set(made) == {"kvzip", "snapkv"} and made["snapkv"].fingerprint == snap.fingerprint
    assert made["kvzip"].params["version"] == "2" and "chunk_size" in made["kvzip"].params
    final = list(tome_tiny.ask([doc.id], "Who lit the lamp?", mode="compressed", compressor="snapkv",
                               max_new_tokens=2))[-1]
    assert final.stats["compressor"] == "snapkv" and final.stats["memory_slots"] == snap.num_slots


def test_memories_are_the_same_after_a_restart(tmp_path, db_url, tokenizer):
    """A new process (a new service, a freshly seeded untrained adapter) finds the memories made before."""
    from tests.conftest import _tiny

    lm = _tiny("llama", tokenizer)
    first = make_tome(tmp_path, db_url, lm, segment_len=64, max_new_tokens=2)
    doc = first.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    ids = {name: first.memory_identity(compressor=name) for name in ("kvzip", "uio")}
    first.memory(doc, compressor="uio")
    files = _files(first)
    first.store.close()
    again = make_tome(tmp_path, db_url, lm, segment_len=64, max_new_tokens=2)
    try:
        assert {name: again.memory_identity(compressor=name) for name in ids} == ids
        list(again.ask([doc.id], "Who?", mode="compressed", compressor="uio"))
        list(again.ask([doc.id], "Who?", mode="compressed"))
        assert _files(again) == files  # nothing made twice, nothing left beside the old files
    finally:
        again.store.close()


def test_collect_removes_memories_no_compressor_in_use_makes(tome_tiny, tmp_path):
    doc = tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    tome_tiny.memory(doc, ratio=32)
    stale = tome_tiny.memory(doc, compressor="keynorm")
    assert len(tome_tiny.memory_sets(doc.id)) == 3
    listed = tome_tiny.collect_memories(dry_run=True)
    assert [m.fingerprint for m in listed] == [stale.fingerprint] and len(tome_tiny.memory_sets(doc.id)) == 3
    removed = tome_tiny.collect_memories()
    assert [m.compressor for m in removed] == ["keynorm"]
    assert {(m.compressor, m.ratio) for m in tome_tiny.memory_sets(doc.id)} == {("kvzip", 8), ("kvzip", 32)}
    assert len(_files(tome_tiny)) == 2
    assert tome_tiny.collect_memories() == []


def test_unknown_compressor_is_refused_clearly(tome_tiny, tmp_path):
    import pytest

    doc = tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    with pytest.raises(ValueError, match="unknown compressor 'zip'; choose one of auto, kvzip"):
        list(tome_tiny.ask([doc.id], "Who?", mode="compressed", compressor="zip"))


def test_int8_storage_writes_int8_files_reads_both_and_answers_like_16_bit(tome_tiny, tmp_path):
    """``memory_dtype="int8"``: new memory files are int8 (recorded in the memory set), files stored in 16 bits
    before the switch still load, and logits read after int8 memories stay close to the 16-bit ones."""
    from uio.decoder import logits_over_memories
    from uio.memory import Memory

    t = tome_tiny
    doc = t.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    (ms16,) = t.memory_sets(doc.id)
    mem16 = t.memory(doc)
    path16 = t.config.memories_path / ms16.path
    assert ms16.params["storage"] == "16bit" and Memory.storage_of(path16) == "16bit"
    t.models.config.memory_dtype = "int8"  # Config.memory_dtype (TOME_MEMORY_DTYPE)
    t.memories.cache.clear()
    again = t.memory(doc)  # the 16-bit file still serves: same identity, storage is a detail
    assert [m.sha256 for m in t.memory_sets(doc.id)] == [ms16.sha256]
    assert torch.equal(again.keys, mem16.keys) and again.keys.dtype == torch.float16
    # the same pages in another file (another sha256, the same segments), ingested under int8 storage
    twin = t.ingest(make_pdf(tmp_path / "lamp2.pdf", PAGES, title="Lamp, again")).document
    assert twin.id != doc.id and t.store.segments(twin.id)[-1].token_end == t.store.segments(doc.id)[-1].token_end
    mem8 = t.memory(twin)
    (ms8,) = t.memory_sets(twin.id)
    path8 = t.config.memories_path / ms8.path
    size16 = path16.stat().st_size
    assert ms8.fingerprint == ms16.fingerprint and ms8.params["storage"] == "int8"
    assert Memory.storage_of(path8) == "int8" and _files(t) == sorted([path16.name, path8.name])  # no chunks
    assert ms8.bytes / size16 < 0.65  # 0.60: tiny model, 16-dim heads (scales weigh more than at 64)
    assert mem8.keys.dtype == mem16.keys.dtype and mem8.slots == mem16.slots
    assert torch.equal(mem8.positions, mem16.positions)
    err = (mem8.values.float() - mem16.values.float()).abs().max()
    assert 0 < err < 0.02 * mem16.values.float().abs().max()
    nxt = torch.tensor([[11, 12, 13, 14]])
    a = logits_over_memories(t.lm, [mem16], nxt)
    b = logits_over_memories(t.lm, [mem8], nxt)
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, a, atol=5e-3, rtol=0)  # measured 1.3e-3 on logits up to 0.83
    final = list(t.ask([twin.id], "Who lit the lamp?", mode="compressed", max_new_tokens=2))[-1]
    assert final.stats["memory_slots"] == mem8.num_slots  # a compressed answer read from the int8 file


def test_an_unknown_memory_dtype_is_refused_before_any_compression(tome_tiny, tmp_path):
    t = tome_tiny
    doc = t.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    t.models.config.memory_dtype = "int4"
    with pytest.raises(ValueError, match="memory_dtype must be one of"):
        t.memories.compress(doc, t.store.segments(doc.id), "lamp", lambda *_: None, chunk=1)
    assert not any(p.name.endswith(".safetensors") and ".chunk" in p.name
                   for p in t.config.memories_path.rglob("*"))  # no chunk was made


def test_an_adapter_file_in_memory_mode_on_kvzip_makes_the_uio_memories(tmp_path, db_url, tokenizer):
    """What a shipped CPU-recipe adapter is: the service loads the file, its memories are KVzip's slots plus the
    transfer head's correction, recorded under the file's fingerprint; a file for other segments is refused."""
    from tests.conftest import _tiny
    from uio.adapter import UIOAdapter
    from uio.memory import MemoryConfig

    lm = _tiny("llama", tokenizer)
    path = tmp_path / "tiny-8x.safetensors"
    trained = UIOAdapter(lm, MemoryConfig(segment_len=64, num_mem=8), mode="memory", base="kvzip").randomize_(seed=5)
    trained.save(path)
    t = make_tome(tmp_path, db_url, lm, segment_len=64, max_new_tokens=2, adapter=path, memory_share=1)
    try:
        doc = t.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
        uio = t.memory(doc, compressor="uio")
        kvzip = t.memory(doc, compressor="kvzip")
        assert uio.fingerprint == trained.fingerprint == t.memory_identity(compressor="uio")
        assert uio.slots == kvzip.slots  # KVzip's slots (equal at a zero LoRA: tests/uio/test_distill_adapter.py) ...
        assert not torch.allclose(uio.keys.float(), kvzip.keys.float(), atol=1e-3)  # ... corrected
        final = list(t.ask([doc.id], "Who lit the lamp?", mode="compressed", compressor="uio"))[-1]
        assert final.stats["compressor"] == "uio" and final.stats["memory_slots"] == uio.num_slots
    finally:
        t.store.close()
    other = make_tome(tmp_path / "b", db_url, lm, segment_len=128, max_new_tokens=2, adapter=path)
    try:
        with pytest.raises(ValueError, match="64-token segments"):
            other.memory_identity(compressor="uio")
    finally:
        other.store.close()


def test_a_configured_adapter_serves_the_ratio_in_its_header(tmp_path, db_url, tokenizer):
    """A 32x file given as the adapter (config ratio left at 8) makes the 32x memories; it is not passed over
    for the shipped or untrained one, and 8x does not pick it up."""
    from tests.conftest import _tiny
    from uio.adapter import UIOAdapter, adapter_ratio
    from uio.memory import MemoryConfig

    lm = _tiny("llama", tokenizer)
    path = tmp_path / "tiny-32x.safetensors"
    trained = UIOAdapter(lm, MemoryConfig(segment_len=64, num_mem=2), mode="memory", base="kvzip").randomize_(seed=7)
    trained.save(path)
    assert adapter_ratio(path) == 32
    t = make_tome(tmp_path, db_url, lm, segment_len=64, max_new_tokens=2, adapter=path, memory_share=1)
    try:
        assert t.config.ratio == 8
        assert t.adapter_file(32) == path and t.adapter_file(8) != path
        assert t.memory_identity(compressor="uio", ratio=32) == trained.fingerprint
        assert t.memory_identity(compressor="uio", ratio=8) != trained.fingerprint
    finally:
        t.store.close()


def test_segments_that_share_a_budget_give_the_same_memories_whatever_the_chunk_and_lock_per_segment(tome_tiny,
                                                                                                     tmp_path):
    """``ScoringCompressor.share``: chunks round up to whole groups (a background chunk of 1 included), so the
    memories equal a one-chunk run's; the model lock is taken once per segment, not once per group."""
    from uio.compress import make_compressor

    t = tome_tiny
    doc = t.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    segments = t.store.segments(doc.id)
    assert len(segments) >= 6
    shared = make_compressor("kvzip", 8, share=4)
    taken = []
    acquire = t.models.lock.acquire

    def counted(*a, **kw):
        taken.append(1)
        return acquire(*a, **kw)

    t.models.lock.acquire = counted
    try:
        one = t.memories.compress(doc, t.memories.stored_segments(doc), "lamp", lambda *_: None, shared, chunk=1)
    finally:
        del t.models.lock.acquire
    assert len(taken) == len(segments)  # per segment
    from uio.memory import Memory

    a = Memory.load(t.config.memories_path / one.path)
    t.files.remove_parts(doc.sha256, one.fingerprint, one.ratio)
    (t.config.memories_path / one.path).unlink()
    whole = t.memories.compress(doc, t.memories.stored_segments(doc), "lamp", lambda *_: None, shared, chunk=64)
    b = Memory.load(t.config.memories_path / whole.path)
    assert a.slots == b.slots and torch.equal(a.keys, b.keys) and torch.equal(a.positions, b.positions)
    plain = t.memory(doc)  # the fixture's kvzip (memory_share=1): each segment its own ceil(n / 8)
    assert whole.fingerprint == one.fingerprint != plain.fingerprint
    assert sum(a.slots) == sum(plain.slots) and a.slots != plain.slots


def test_the_default_config_shares_budgets_for_kvzip_only(tmp_path, db_url, tokenizer):
    from tests.conftest import _tiny

    t = make_tome(tmp_path, db_url, _tiny("llama", tokenizer), segment_len=64, max_new_tokens=2)
    try:
        assert t.config.memory_share == 16
        assert t.models.compressor(8, "kvzip").share == 16 and t.models.compressor(32, "kvzip").share == 16
        assert t.models.compressor(8, "snapkv").share == 1 and t.models.compressor(8, "streaming").share == 1
        doc = t.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
        mem = t.memory(doc)
        made = t.memory_sets(doc.id)[0]
        assert made.params["share"] == 16 and mem.fingerprint == t.memory_identity()
        per_segment = t.memory(doc, compressor="snapkv")
        assert sum(mem.slots) == sum(per_segment.slots) and mem.slots != per_segment.slots
    finally:
        t.store.close()
