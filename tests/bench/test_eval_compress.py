"""bench/eval_compress.py's cells on a tiny Tome: a compressor variant makes that compressor's memories."""
from tests.conftest import make_pdf

PAGES = [f"Page {i}. " + "The keeper lit the lamp at dusk and the ships passed the point. " * 10 for i in range(1, 5)]


def test_a_ppl_cell_with_a_compressor_variant_reads_that_compressors_memories(tome_tiny, tmp_path):
    from bench.eval_compress import next_segment_nll, parse_method

    assert parse_method("kvzip-fast@32/share16") == ("kvzip-fast", 32, "share16")
    doc = tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    shared = next_segment_nll(tome_tiny, doc, "kvzip@8/share2", prev=2, target=16)
    plain = next_segment_nll(tome_tiny, doc, "kvzip@8", prev=2, target=16)  # the fixture's: memory_share=1
    made = {m.params.get("share", 1) for m in tome_tiny.memory_sets(doc.id) if m.compressor == "kvzip"}
    assert made == {1, 2}  # "/share2" made its own memories, not a positions option
    assert len(shared) == len(plain) > 2 and all(n == 15 for _, n, _ in shared)  # 16 tokens, 15 predicted
    assert [round(nll, 4) for nll, _, _ in shared] != [round(nll, 4) for nll, _, _ in plain]
    assert tome_tiny.models.compressor(8, "kvzip").share == 1  # the override ended with the cell
