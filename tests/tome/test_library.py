"""The library never loses or corrupts a book: memories on disk, checksums, deletion, recovery."""
import pytest
import torch

from storage import CorruptMemory
from tests.conftest import TIDES, files_of, tides_book

def test_ingest_stores_a_checksummed_memory_file_per_document(tome_tiny, tmp_path):
    r = tome_tiny.ingest(tides_book(tmp_path))
    assert r.ok and r.document.ready and r.document.extractor == "pypdf"
    assert set(r.timings) == {"extract_s", "segment_s", "embed_s", "compress_s", "store_s"}
    assert r.job.status == "done" and r.job.segments_done == r.job.segments_total  # both stages waited for
    sets = tome_tiny.store.memory_sets(r.document.id)
    assert len(sets) == 1 and sets[0].ratio == 8 and sets[0].fingerprint == tome_tiny.memory_identity()
    assert sets[0].compressor == "kvzip" and sets[0].params["version"] == "2"  # the default, recorded
    assert files_of(tome_tiny) == [sets[0].path]  # chunks are gone once the whole file is in place
    segs = tome_tiny.store.segments(r.document.id)
    assert len(segs) > 4
    mem = tome_tiny.memory(r.document)
    assert mem.segment_ids == [s.index for s in segs]
    assert mem.token_spans == [(s.token_start, s.token_end) for s in segs]
    assert mem.nbytes < sets[0].bytes < mem.nbytes + 4096  # tensors plus a small header


def test_compressed_answer_reads_memories_and_cites_pages(tome_tiny, tmp_path):
    r = tome_tiny.ingest(tides_book(tmp_path))
    final = list(tome_tiny.ask([r.document.id], "What rose from the wall?", mode="compressed"))[-1]
    n_slots = tome_tiny.memory(r.document).num_slots
    assert final.mode == "compressed" and final.stats["memory_slots"] == n_slots == final.context_tokens
    # every segment fits: all are cited, best score first, covering pages 1-6
    assert {s.segment for s in final.sources} == set(range(len(tome_tiny.store.segments(r.document.id))))
    assert min(s.page_start for s in final.sources) == 1 and max(s.page_end for s in final.sources) == 6
    assert [s.score for s in final.sources] == sorted((s.score for s in final.sources), reverse=True)
    plain = list(tome_tiny.ask([r.document.id], "What rose from the wall?"))[-1]
    assert plain.stats["kv_bytes"] > final.stats["kv_bytes"]  # compressed attends to fewer bytes
    assert tome_tiny.store.messages(final.conversation_id)[1].mode == "compressed"


def test_corrupt_or_missing_memory_file_is_reported_and_reingest_repairs_it(tome_tiny, tmp_path):
    r = tome_tiny.ingest(tides_book(tmp_path))
    path = tome_tiny.config.memories_path / tome_tiny.store.memory_sets(r.document.id)[0].path
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    tome_tiny.memories.cache.clear()
    with pytest.raises(CorruptMemory, match="corrupt.*re-ingest"):
        list(tome_tiny.ask([r.document.id], "Anything?", mode="compressed"))
    path.unlink()
    with pytest.raises(CorruptMemory, match="missing"):
        tome_tiny.memory(r.document)
    fixed = tome_tiny.reingest(r.document.id)
    assert fixed.ok and fixed.document.sha256 == r.document.sha256
    assert tome_tiny.memory(fixed.document).num_slots > 0
    assert [d.title for d in tome_tiny.documents()] == ["tides"]


def test_delete_removes_rows_memory_files_and_the_kept_upload(tome_tiny, tmp_path):
    a = tome_tiny.ingest(tides_book(tmp_path, "a.pdf")).document
    b = tome_tiny.ingest(tides_book(tmp_path, "b.pdf", TIDES[:3])).document
    tome_tiny.delete(a.id)
    assert [d.id for d in tome_tiny.documents()] == [b.id]
    assert all(a.sha256 not in f for f in files_of(tome_tiny)) and files_of(tome_tiny)
    assert not list(tome_tiny.config.uploads_path.glob(f"{a.sha256}.*"))
    assert list(tome_tiny.config.uploads_path.glob(f"{b.sha256}.*"))


@pytest.mark.parametrize("where", ["vectors", "passage rows"])
def test_failure_in_stage_1_leaves_nothing_behind(tome_tiny, tmp_path, monkeypatch, where):
    def broken(*a, **k):  # fault injection: before any row is stored, or after the segments' rows exist
        raise RuntimeError("disk on fire")

    if where == "vectors":
        monkeypatch.setattr(tome_tiny.retriever, "embed_passages", broken)
    else:
        monkeypatch.setattr(tome_tiny.store, "set_passages", broken)
    r = tome_tiny.ingest(tides_book(tmp_path))
    assert not r.ok and "disk on fire" in r.error
    assert tome_tiny.documents() == [] and tome_tiny.store.count_segments() == 0 and tome_tiny.store.jobs() == []
    assert files_of(tome_tiny) == [] and not list(tome_tiny.config.uploads_path.glob("*"))


def test_failure_during_compression_leaves_the_book_askable_and_no_chunks(tome_tiny, tmp_path, monkeypatch):
    from tome.memories import _Bound

    calls = {"n": 0}
    real = _Bound.compress

    def flaky(self, *a, **k):  # fault injection: the second chunk fails
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(self, *a, **k)

    monkeypatch.setattr(_Bound, "compress", flaky)
    r = tome_tiny.ingest(tides_book(tmp_path))
    assert not r.ok and "disk on fire" in r.error and "askable uncompressed" in r.error
    doc = tome_tiny.documents()[0]
    assert doc.ready and r.job.status == "failed"  # stage 1 stands; stage 2 is shown as failed
    assert tome_tiny.book_status(doc).startswith("failed: RuntimeError: disk on fire")
    assert files_of(tome_tiny) == []  # the chunk made before the failure is gone
    assert list(tome_tiny.ask([doc.id], "Anything?"))[-1].done  # uncompressed answers work
    monkeypatch.setattr(_Bound, "compress", real)
    assert tome_tiny.reingest(doc.id).ok and tome_tiny.book_status(tome_tiny.documents()[0]) == "ready"


def test_start_up_check_finishes_interrupted_ingestion_and_removes_orphans(tome_tiny, tmp_path):
    pdf = tides_book(tmp_path)
    whole = tome_tiny.ingest(pdf)
    reference = tome_tiny.memory(whole.document)
    # Simulate a crash in stage 1 after the rows were stored: document 'ingesting', no memories, no job.
    fp = tome_tiny.memory_identity()
    tome_tiny.store.delete_memory_set(whole.document.id, fp)
    tome_tiny.store.delete_job(whole.job.id)
    final = tome_tiny.config.memories_path / tome_tiny.files.final(whole.document.sha256, fp, 8)
    final.unlink()
    from sqlalchemy import update

    from storage.schema import Document
    with tome_tiny.store.engine.begin() as conn:
        conn.execute(update(Document).values(status="ingesting"))
    orphan = tome_tiny.config.memories_path / "zz" / "zz-orphan.safetensors"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left over")
    assert [d.status for d in tome_tiny.documents()] == ["ingesting"]
    with pytest.raises(ValueError, match="still being ingested"):
        list(tome_tiny.ask([whole.document.id], "Anything?"))

    report = tome_tiny.recover()
    assert report.resumed == ["tides"] and report.removed == [] and report.orphans == [str(orphan)]
    doc = tome_tiny.documents()[0]
    assert doc.ready and tome_tiny.book_status(doc).startswith("queued 0/")  # askable; stage 2 queued
    assert [j.status for j in tome_tiny.compress_queued()] == ["done"]
    tome_tiny.memories.cache.clear()
    again = tome_tiny.memory(doc)
    assert torch.equal(again.keys, reference.keys) and torch.equal(again.values, reference.values)
    assert not orphan.exists() and files_of(tome_tiny) == [tome_tiny.store.memory_sets(doc.id)[0].path]


def test_start_up_check_removes_unfinished_documents_it_cannot_finish(tome_tiny, tmp_path):
    tome_tiny.ingest(tides_book(tmp_path))
    for f in tome_tiny.config.uploads_path.iterdir():
        f.unlink()
    from sqlalchemy import update

    from storage.schema import Document
    with tome_tiny.store.engine.begin() as conn:
        conn.execute(update(Document).values(status="ingesting"))
    report = tome_tiny.recover()
    assert report.removed == ["tides"] and tome_tiny.documents() == [] and files_of(tome_tiny) == []


def test_memories_of_another_ratio_are_never_used_but_made_on_demand(tome_tiny, tmp_path):
    from uio.compress import slots_at_ratio

    r = tome_tiny.ingest(tides_book(tmp_path))
    first = tome_tiny.memory(r.document)
    # 32x for the same book: not stored at ingestion, made from the stored segments when first asked.
    mem32 = tome_tiny.memory(r.document, ratio=32)
    assert mem32.fingerprint != first.fingerprint and mem32.ratio == 32
    lengths = [b - a for a, b in first.token_spans]
    assert first.slots == [slots_at_ratio(n, 8) for n in lengths]  # ceil(n / 8) per segment
    assert mem32.slots == [slots_at_ratio(n, 32) for n in lengths]
    assert {m.ratio for m in tome_tiny.store.memory_sets(r.document.id)} == {8, 32}
    final = list(tome_tiny.ask([r.document.id], "Anything?", mode="compressed", ratio=32))[-1]
    assert final.stats["memory_slots"] == mem32.num_slots and final.stats["ratio"] == 32
    tome_tiny.delete(r.document.id)
    assert files_of(tome_tiny) == []


def test_an_adapter_for_another_segment_length_is_refused_clearly(tmp_path, tokenizer):
    from tests.conftest import _tiny, make_tome
    from uio.adapter import UIOAdapter
    from uio.memory import MemoryConfig

    lm = _tiny("llama", tokenizer)
    path = tmp_path / "l32.safetensors"
    UIOAdapter(lm, MemoryConfig(segment_len=32, num_mem=4)).save(path)
    tome = make_tome(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", lm, segment_len=64, adapter=path)
    with pytest.raises(ValueError, match="32-token segments, but TOME_SEGMENT_LEN is 64"):
        tome.adapter_for(8)
    tome.store.close()


def test_a_configured_file_that_is_no_adapter_is_refused_clearly(tmp_path, tokenizer):
    """TOME_ADAPTER naming a file that is not a safetensors adapter: it still serves the config's ratio (not
    silently passed over for the shipped one) and loading it says why."""
    from tests.conftest import _tiny, make_tome

    path = tmp_path / "notes.safetensors"
    path.write_text("not an adapter")
    tome = make_tome(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", _tiny("llama", tokenizer), segment_len=64,
                     adapter=path)
    assert tome.models.adapter_file(8) == path
    with pytest.raises(ValueError, match="notes.safetensors is not a UIO adapter file"):
        tome.adapter_for(8)
    tome.store.close()


def test_stage_1_stores_passages_with_vectors_and_no_segment_vectors(tome_tiny, tmp_path):
    r = tome_tiny.ingest(tides_book(tmp_path), wait=False)
    doc = r.document
    assert doc.ready and doc.passage_embedder == "all-MiniLM-L6-v2" and doc.embedder is None
    assert all(v is not None for v in tome_tiny.store.passage_embeddings(doc.id))
    assert set(tome_tiny.store.embeddings(doc.id)) == {None}  # whole-segment vectors: not made in stage 1
    # the old baseline (bench/eval_retrieval.py) still gets them, on demand
    tome_tiny.retriever.segment_scores([doc], "What rose from the wall?")
    assert tome_tiny.document(doc.id).embedder == "all-MiniLM-L6-v2"
    assert None not in tome_tiny.store.embeddings(doc.id)
