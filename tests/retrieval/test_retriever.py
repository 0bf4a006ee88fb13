"""The retriever: passages made lazily, exact terms found anywhere in a segment, hybrid ranking."""
from tests.conftest import MANUAL, manual_store


def _long_segments():
    """Three segments of ~1,000 Qwen tokens with the same text, but segment 1 ends with a rare fact."""
    from ingest.segments import Segment

    filler = " ".join(f"The council reviewed item {i} of the harbour budget and approved the minutes."
                      for i in range(70))
    fact = " To count the nesting pelicans, run the command zqxtally --by-colony on the census file."
    texts = [filler, filler + fact, filler]
    return [Segment(i, t, i + 1, i + 1, 1024 * i, 1024 * (i + 1)) for i, t in enumerate(texts)]



def test_documents_without_passages_get_them_on_first_use(tome_tiny):
    from ingest.segments import Segment

    segs = [Segment(0, "Nothing here.", 1, 1, 0, 3), Segment(1, "The vault code is 4417.", 2, 2, 3, 9)]
    doc = tome_tiny.store.add_document(sha256="e" * 64, title="Old", filename="old.pdf", kind="pdf", pages=2,
                                       segments=segs)
    assert doc.embedder is None and doc.passage_embedder is None and tome_tiny.store.passages(doc.id) == []
    hits = tome_tiny.retrieve([doc.id], "What is the vault code?", k=1)
    assert [(h.index, h.page_start, h.text) for h in hits] == [(1, 2, "The vault code is 4417.")]
    assert tome_tiny.document(doc.id).passage_embedder == "all-MiniLM-L6-v2"
    assert [(p.segment, p.page) for p in tome_tiny.store.passages(doc.id)] == [(0, 1), (1, 2)]
    assert all(b is not None for b in tome_tiny.store.passage_embeddings(doc.id))
    # the old whole-segment vectors are still made on demand, for comparison
    tome_tiny.retriever.segment_scores([tome_tiny.document(doc.id)], "vault")
    assert all(b is not None for b in tome_tiny.store.embeddings(doc.id))


def test_a_term_at_the_end_of_a_long_segment_is_found(db_url):
    from retrieval.retriever import Retriever
    from storage import Store

    store = Store(db_url)
    doc = store.add_document(sha256="f" * 64, title="Harbour", filename="h.pdf", kind="pdf", pages=3,
                             segments=_long_segments())
    r = Retriever(store)
    assert len(r.embedder.tokenizer(_long_segments()[1].text)["input_ids"]) > 3 * 256  # far past the window
    # the old whole-segment vector sees only the first 256 word pieces: identical for the three segments
    old = r.segment_scores([doc], "How do I count the nesting pelicans?")[doc.id]
    assert abs(old[1] - old[0]) < 1e-5 and abs(old[1] - old[2]) < 1e-5
    for mode in ("vector", "lexical", "hybrid"):
        top = r.retrieve([store.get_document(doc.id)], "How do I count the nesting pelicans?", k=1, mode=mode)[0]
        assert (top.index, top.page_start) == (1, 2) and "zqxtally" in top.text, mode
    exact = r.retrieve([store.get_document(doc.id)], "zqxtally", k=1, mode="lexical")
    assert exact and exact[0].index == 1
    scores = r.scores([store.get_document(doc.id)], "How do I count the nesting pelicans?")[doc.id]
    assert max(scores, key=scores.get) == 1
    # SQLite searches in this process: at once, not in a thread beside the embedding (which it slowed)
    assert bool(r._fulltext._threads) == (store.engine.dialect.name != "sqlite")
    store.close()


def test_hybrid_ranking_puts_the_passage_both_indexes_like_first(db_url, monkeypatch):
    from retrieval.retriever import Retriever
    from retrieval.search import Hit
    from storage import TextHit

    store, doc = manual_store(db_url)
    r = Retriever(store)
    doc = store.get_document(doc.id)
    r.with_passages = lambda docs: list(docs)  # the fixture's passages carry no vectors: rank by fiat
    monkeypatch.setattr(r.passage_vectors, "search", lambda q, docs, k: [
        Hit(doc.id, 0, 0.9), Hit(doc.id, 2, 0.8), Hit(doc.id, 4, 0.7)])
    monkeypatch.setattr(store, "search_text", lambda ids, q, k: [
        TextHit(doc.id, 3, 9.0), TextHit(doc.id, 2, 5.0), TextHit(doc.id, 1, 1.0)])
    hits = r.rank([doc], "anything").hits
    assert hits[0].passage == 2 and hits[0].vector == 0.8 and hits[0].lexical == 5.0
    assert hits[0].page_start == MANUAL[2][0]
    assert {h.passage for h in hits} == {0, 1, 2, 3, 4}
    store.close()
