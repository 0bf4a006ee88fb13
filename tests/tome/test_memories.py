"""Memories per compressor: recorded with their maker, never mixed, deterministic across restarts, collected."""
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
