"""Choosing segments across books: embeddings, vector search, the selector, citations, LangChain."""
from dataclasses import dataclass

import numpy as np
import pytest

from tests.conftest import make_pdf


@dataclass(frozen=True)
class Seg:
    index: int
    n: int
    page_start: int = 1
    page_end: int = 1
    text: str = ""

    @property
    def n_tokens(self) -> int:
        return self.n


# -- the selector (pure) -------------------------------------------------------

def test_selector_takes_everything_when_it_fits():
    from retrieval.select import select_segments

    books = [("A", [Seg(0, 10), Seg(1, 10)]), ("B", [Seg(0, 5)])]
    sel = select_segments(books, [{0: 0.1, 1: 0.9}, {0: 0.5}], budget=25)
    assert [(p.title, p.segment.index, p.score) for p in sel.passages] == [("A", 0, 0.1), ("A", 1, 0.9), ("B", 0, 0.5)]
    assert sel.truncated == [] and sel.tokens == 25


def test_selector_keeps_budget_document_order_and_neighbours():
    from retrieval.select import select_segments

    a = [Seg(i, 10) for i in range(10)]
    b = [Seg(i, 10) for i in range(6)]
    scores = [{i: 0.0 for i in range(10)} | {7: 0.9, 2: 0.5}, {i: 0.0 for i in range(6)} | {4: 0.8}]
    sel = select_segments([("A", a), ("B", b)], scores, budget=75, neighbours=1)
    got = [(p.title, p.segment.index) for p in sel.passages]
    # hits A7 (0.9), B4 (0.8), A2 (0.5), each with +-1 while it fits; 7 segments = 70 <= 75
    # A7 +A8 +A6 (30), B4 +B5 +B3 (60), A2 (70); A3, A1 and every 0-score segment would pass 75
    assert got == [("A", 2), ("A", 6), ("A", 7), ("A", 8), ("B", 3), ("B", 4), ("B", 5)]
    assert sel.tokens == 70 and sel.truncated == ["A", "B"]
    for title in "AB":  # document order within each book, books in the order given
        idx = [p.segment.index for p in sel.passages if p.title == title]
        assert idx == sorted(idx)
    assert [p.title for p in sel.passages] == sorted(p.title for p in sel.passages)


def test_selector_prefers_the_best_hit_and_skips_what_does_not_fit():
    from retrieval.select import select_segments

    segs = [Seg(0, 30), Seg(1, 50), Seg(2, 10), Seg(3, 10)]
    sel = select_segments([("A", segs)], [{1: 0.9, 3: 0.8, 0: 0.1, 2: 0.2}], budget=65, neighbours=1)
    # hit 1 (50) + neighbour 2 (10) = 60; neighbour 0 (30) and hit 3 (10) do not fit
    assert [p.segment.index for p in sel.passages] == [1, 2]
    assert sel.tokens <= 65


def test_selector_every_book_takes_each_books_best_hit_before_neighbours():
    from retrieval.select import select_segments

    a, b = [Seg(i, 10) for i in range(5)], [Seg(i, 10) for i in range(5)]
    scores = [{2: 0.9, 3: 0.8}, {4: 0.5}]
    plain = select_segments([("A", a), ("B", b)], scores, budget=30, neighbours=1)
    assert [(p.title, p.segment.index) for p in plain.passages] == [("A", 1), ("A", 2), ("A", 3)]  # B never in
    both = select_segments([("A", a), ("B", b)], scores, budget=30, neighbours=1, every_book=True)
    assert [(p.title, p.segment.index) for p in both.passages] == [("A", 2), ("A", 3), ("B", 4)]


def test_selector_reach_brings_only_the_neighbours_a_hit_calls_for():
    from retrieval.select import select_segments

    a = [Seg(i, 10) for i in range(6)]
    scores = [{1: 0.9, 4: 0.8}]
    sel = select_segments([("A", a)], scores, budget=40, neighbours=1, reach=[{1: (0, 0), 4: (0, 1)}])
    assert [p.segment.index for p in sel.passages] == [1, 4, 5]  # 1 in mid-segment, 4 ends at its edge
    sel = select_segments([("A", a)], scores, budget=40, neighbours=1)
    assert [p.segment.index for p in sel.passages] == [0, 1, 2, 4]


def test_reach_follows_where_the_best_passage_sits():
    from retrieval.retriever import Ranking, Retrieved

    texts = ["x" * 100, "y" * 100, "z" * 100]
    hits = [Retrieved(1, "A", 0, "", 1, 1, 0.9, 0, 5, 30), Retrieved(1, "A", 1, "", 2, 2, 0.8, 3, 90, 100),
            Retrieved(1, "A", 2, "", 3, 3, 0.7, 6, 40, 60)]
    assert Ranking(hits).reach(1, texts, 1) == {0: (1, 0), 1: (0, 1), 2: (0, 0)}


def test_selector_for_random_inputs_never_exceeds_the_budget():
    from retrieval.select import select_segments

    rng = np.random.default_rng(0)
    for _ in range(50):
        books = [(f"B{b}", [Seg(i, int(rng.integers(1, 40))) for i in range(int(rng.integers(1, 12)))])
                 for b in range(int(rng.integers(1, 4)))]
        scores = [{i: float(rng.random()) for i in range(len(s))} for _, s in books]
        budget = int(rng.integers(0, 200))
        sel = select_segments(books, scores, budget)
        assert sel.tokens <= budget or not sel.truncated
        best = max(((sc, t, i) for (t, segs), m in zip(books, scores) for i, sc in m.items()
                    if segs[i].n <= budget), default=None)
        if best and sel.truncated:  # the single best hit that fits on its own is always in
            assert (best[1], best[2]) in {(p.title, p.segment.index) for p in sel.passages}


# -- embeddings and vector search ------------------------------------------------

def _store_with_random_vectors(url, n_docs=3, per_doc=40, dim=16, seed=0):
    from retrieval.embed import to_bytes
    from storage import Store

    rng = np.random.default_rng(seed)
    store = Store(url)
    docs = []
    for d in range(n_docs):
        segs = [Seg(i, 5, text=f"doc {d} seg {i}") for i in range(per_doc)]
        for s in segs:
            object.__setattr__(s, "token_start", 5 * s.index)
            object.__setattr__(s, "token_end", 5 * s.index + 5)
        vecs = rng.standard_normal((per_doc, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        doc = store.begin_document(sha256=f"{d:064d}", title=f"D{d}", filename=f"d{d}.pdf", kind="pdf", pages=1,
                                   segments=segs, embeddings=[to_bytes(v) for v in vecs], embedder="random")
        docs.append(store.finish_document(doc.id))
    return store, docs, rng


def test_embeddings_survive_a_store_round_trip(db_url):
    from retrieval.embed import from_bytes, to_bytes

    store, docs, _ = _store_with_random_vectors(db_url, n_docs=1, per_doc=5)
    blobs = store.embeddings(docs[0].id)
    assert len(blobs) == 5 and all(len(b) == 16 * 4 for b in blobs)
    assert store.get_document(docs[0].id).embedder == "random"
    new = [to_bytes(np.full(16, 0.25, np.float32)) for _ in range(5)]
    store.set_embeddings(docs[0].id, "other", new)
    assert [from_bytes(b).tolist() for b in store.embeddings(docs[0].id)] == [[0.25] * 16] * 5
    assert store.get_document(docs[0].id).embedder == "other"
    store.close()


def test_sqlite_vec_index_returns_the_same_top_k_as_brute_force(tmp_path):
    from retrieval.search import VectorSearch

    store, docs, rng = _store_with_random_vectors(f"sqlite:///{tmp_path / 't.sqlite'}")
    brute = VectorSearch(store, index_threshold=10**9)
    indexed = VectorSearch(store, index_threshold=0)
    assert indexed.uses_index(1) and not brute.uses_index(10**6)
    for _ in range(5):
        q = rng.standard_normal(16).astype(np.float32)
        q /= np.linalg.norm(q)
        for chosen in (docs, docs[1:]):
            a, b = brute.search(q, chosen, 7), indexed.search(q, chosen, 7)
            assert [(h.document_id, h.index) for h in a] == [(h.document_id, h.index) for h in b]
            assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    assert (tmp_path / "t.sqlite.vec").is_file()
    store.close()


def test_sqlite_vec_index_over_passages_returns_the_same_top_k_as_brute_force(tmp_path):
    from retrieval.embed import to_bytes
    from retrieval.passages import PassageSpan
    from retrieval.search import VectorSearch

    store, docs, rng = _store_with_random_vectors(f"sqlite:///{tmp_path / 't.sqlite'}")
    for d in docs:
        vecs = rng.standard_normal((90, 16)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store.set_passages(d.id, "random", [PassageSpan(i, i // 3, 1, 0, 1, f"p{i}") for i in range(90)],
                           [to_bytes(v) for v in vecs])
    docs = [store.get_document(d.id) for d in docs]
    brute = VectorSearch(store, index_threshold=10**9, kind="passages")
    indexed = VectorSearch(store, index_threshold=0, kind="passages")
    for _ in range(3):
        q = rng.standard_normal(16).astype(np.float32)
        q /= np.linalg.norm(q)
        a, b = brute.search(q, docs, 9), indexed.search(q, docs[1:] + docs[:1], 9)
        assert [(h.document_id, h.index) for h in a] == [(h.document_id, h.index) for h in b]
    assert (tmp_path / "t.sqlite.pvec").is_file()
    store.close()


def test_real_embedder_loads_offline_and_normalises():
    from retrieval.embed import DEFAULT_NAME, load_embedder, packaged_model_dir

    assert (packaged_model_dir() / "model.safetensors").is_file()
    e = load_embedder()
    v = e.encode(["The door is red.", "A red door.", "Quarterly tax rules."])
    assert e.name == DEFAULT_NAME and v.dtype == np.float32 and v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]


# -- the service -----------------------------------------------------------------

FILLER = "The committee met on Tuesday and discussed the budget, the roads and the new library. "


def _books(tmp_path):
    pages = {
        "Alder": [FILLER * 6, "The Alder orchard grows forty apple trees along the river. " + FILLER * 4],
        "Birch": [FILLER * 6, "The Birch lighthouse keeper owns a tame falcon named Ossian. " + FILLER * 4,
                  FILLER * 6],
        "Cedar": [FILLER * 6, "Cedar station sells tickets for the night train to the coast. " + FILLER * 4],
    }
    return {t: make_pdf(tmp_path / f"{t}.pdf", p, title=t) for t, p in pages.items()}


@pytest.mark.parametrize("mode", ["uncompressed", "compressed"])
def test_question_about_book_b_cites_b_page_across_three_books(tome_tiny, tmp_path, mode):
    ids = {t: tome_tiny.ingest(p).document.id for t, p in _books(tmp_path).items()}
    assert all(tome_tiny.document(i).embedder == "all-MiniLM-L6-v2" for i in ids.values())
    tome_tiny.config.context_budget = 300  # uncompressed: three books do not fit, the selector chooses
    if mode == "compressed":  # compressed: shrink the window so the memories do not all fit either
        lm = tome_tiny.lm
        lm.model.config.max_position_embeddings = 60 + 16 + 3 + _bare_prompt(tome_tiny, mode)
    final = list(tome_tiny.ask(list(ids.values()), "What is the name of the lighthouse keeper's falcon?",
                               max_new_tokens=3, mode=mode))[-1]
    top = final.sources[0]
    assert top.document_id == ids["Birch"] and top.page_start <= 2 <= top.page_end and "Ossian" in top.snippet
    assert final.truncated  # the selector cut something
    assert [s.score for s in final.sources] == sorted((s.score for s in final.sources), reverse=True)
    stored = tome_tiny.store.messages(final.conversation_id)[1].stats["sources"]
    assert stored[0]["title"] == "Birch" and stored[0]["page_start"] <= 2 <= stored[0]["page_end"]
    if mode == "compressed":
        assert final.stats["prefix_len"] == final.context_tokens <= 60


def _bare_prompt(tome, mode):
    from retrieval.prompt import Selection, build_messages, count_tokens

    titles = [d.title for d in tome.documents()]
    return count_tokens(tome.lm.tokenizer, build_messages(Selection([], []), "What is the name of the "
                                                         "lighthouse keeper's falcon?", memory_of=titles))


@pytest.mark.parametrize("mode", ["uncompressed", "compressed"])
def test_both_modes_choose_segments_through_the_selector(tome_tiny, tmp_path, monkeypatch, mode):
    import tome.answer

    calls = []
    real = tome.answer.select_segments

    def spy(books, scores, budget, neighbours=1, **kw):
        calls.append((len(books), budget))
        return real(books, scores, budget, neighbours, **kw)

    monkeypatch.setattr(tome.answer, "select_segments", spy)  # the answer path's one call of the selector
    r = tome_tiny.ingest(make_pdf(tmp_path / "x.pdf", ["Some text about tides.", "More about gulls."]))
    list(tome_tiny.ask([r.document.id], "gulls?", max_new_tokens=2, mode=mode))
    assert len(calls) == 1 and calls[0][0] == 1 and calls[0][1] > 0


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


# -- passages, full text, fusion ---------------------------------------------------

def test_passages_stay_within_a_page_and_the_embedder_window():
    from retrieval.embed import load_embedder
    from retrieval.passages import MAX_PIECES, estimated_breaks, split_passages

    tok = load_embedder().tokenizer
    text = ("alpha beta gamma delta. " * 120).strip() + "\n\n" + ("epsilon zeta eta theta. " * 90).strip()
    cut = text.index("epsilon")
    ps = split_passages(text, [(0, 7), (cut, 8)], tok, segment=3)
    assert [p.index for p in ps] == list(range(len(ps))) and all(p.segment == 3 for p in ps)
    for p in ps:
        assert p.text == text[p.start:p.end]
        assert len(tok(p.text, add_special_tokens=False)["input_ids"]) <= MAX_PIECES
        assert ("epsilon" in p.text) == (p.page == 8) and ("alpha" in p.text) == (p.page == 7)
    assert ps[-1].end == len(text) and ps[0].start == 0
    # consecutive passages of a page overlap, so no sentence is only ever seen cut
    same = [(a, b) for a, b in zip(ps, ps[1:]) if a.page == b.page]
    assert same and all(b.start < a.end for a, b in same)
    assert estimated_breaks(text, 7, 8) == [(0, 7), (cut, 8)]  # the paragraph break near the middle


def test_page_breaks_are_exact_from_the_pages(tokenizer):
    from ingest.pages import Page
    from ingest.segments import split_segments
    from retrieval.embed import load_embedder
    from retrieval.passages import make_passages, page_breaks

    pages = [Page(n, f"Page {n} says: " + " ".join(f"w{n}x{i}" for i in range(12))) for n in range(1, 8)]
    segs = split_segments(pages, tokenizer, 150)
    assert any(s.page_start != s.page_end for s in segs)
    ps = make_passages(segs, load_embedder().tokenizer, page_breaks(pages, segs))
    for p in ps:
        words = {w.split("x")[0] for w in p.text.split() if w.startswith("w")}
        assert words == {f"w{p.page}"}, (p.page, p.text[:80])
    assert {p.page for p in ps} == set(range(1, 8))


def _long_segments():
    """Three segments of ~1,000 Qwen tokens with the same text, but segment 1 ends with a rare fact."""
    from ingest.segments import Segment

    filler = " ".join(f"The council reviewed item {i} of the harbour budget and approved the minutes."
                      for i in range(70))
    fact = " To count the nesting pelicans, run the command zqxtally --by-colony on the census file."
    texts = [filler, filler + fact, filler]
    return [Segment(i, t, i + 1, i + 1, 1024 * i, 1024 * (i + 1)) for i, t in enumerate(texts)]


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
    store.close()


MANUAL = [  # (page, text) of a small fixture for the two full-text engines
    (1, "Use read.table to read a data file into a data frame; read.csv is the same with commas."),
    (2, "The table of contents lists every chapter. Read it before the first chapter."),
    (3, "The prompt string PS1 is shown before each command; PS2 continues a line."),
    (4, "An ENOENT error means that no such file or directory exists."),
    (5, "Plotting: the plot command draws curves, and set terminal chooses the output format."),
]


def _manual_store(url):
    from retrieval.passages import PassageSpan
    from storage import Store
    from ingest.segments import Segment

    store = Store(url)
    segs = [Segment(i, t, p, p, 10 * i, 10 * i + 10) for i, (p, t) in enumerate(MANUAL)]
    doc = store.add_document(sha256="d" * 64, title="Manual", filename="m.pdf", kind="pdf", pages=5,
                             segments=segs)
    store.set_passages(doc.id, "none", [PassageSpan(i, i, p, 0, len(t), t) for i, (p, t) in enumerate(MANUAL)])
    return store, doc


FULL_TEXT_CASES = [("What does read.table do?", 1), ("How do I set the PS1 prompt?", 3),
                   ("ENOENT", 4), ("which terminal for plots", 5), ("table of contents", 2)]


def test_full_text_finds_exact_terms_and_survives_query_syntax(db_url):
    store, doc = _manual_store(db_url)
    for query, page in FULL_TEXT_CASES:  # SQLite FTS5 and PostgreSQL agree on the top passage
        hits = store.search_text([doc.id], query, 3)
        assert hits and MANUAL[hits[0].index][0] == page, (query, hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for nasty in ['"', "NEAR(", "a OR", "*", "col:umn", "AND NOT", "-x", "'; DROP TABLE passages; --", "(((",
                  "the of a"]:
        store.search_text([doc.id], nasty, 3)  # never a syntax error
    assert store.search_text([doc.id], "", 3) == [] and store.search_text([], "table", 3) == []
    assert store.search_text([doc.id + 1], "table", 3) == []  # only the chosen documents
    store.close()


def test_fts5_and_postgresql_return_the_same_top_passages(tmp_path):
    import os

    if not os.environ.get("TOME_TEST_PG"):
        pytest.skip("TOME_TEST_PG not set")
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["TOME_TEST_PG"])
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    lite, a = _manual_store(f"sqlite:///{tmp_path / 'm.sqlite'}")
    pg, b = _manual_store(os.environ["TOME_TEST_PG"])
    for query, _ in FULL_TEXT_CASES:
        assert lite.search_text([a.id], query, 1)[0].index == pg.search_text([b.id], query, 1)[0].index, query
    lite.close()
    pg.close()


def test_deleting_a_document_removes_its_passages_from_the_full_text_index(db_url):
    from sqlalchemy import text

    store, doc = _manual_store(db_url)
    assert store.count_passages([doc.id]) == len(MANUAL)
    store.delete_document(doc.id)
    assert store.count_passages() == 0 and store.search_text([doc.id], "table", 5) == []
    if store.engine.dialect.name == "sqlite":
        with store.engine.begin() as conn:  # raises if the index and the passages table disagree
            conn.execute(text("INSERT INTO passages_fts(passages_fts) VALUES ('integrity-check')"))
    store.close()


def test_fusion_ranks_what_both_indexes_like_above_what_one_likes():
    from retrieval.fusion import rrf

    vector = ["v1", "both", "v2", "v3"]
    lexical = ["l1", "l2", "both", "l3"]
    fused = rrf([vector, lexical])
    ranked = sorted(fused, key=fused.get, reverse=True)
    assert ranked[0] == "both"  # 2nd and 3rd beats 1st in one list only
    assert set(ranked) == set(vector) | set(lexical)
    assert fused["v1"] == fused["l1"] > fused["v2"]
    assert sorted(rrf([vector, lexical], weights=[1.0, 0.0]), key=fused.get)  # weights accepted


def test_hybrid_ranking_puts_the_passage_both_indexes_like_first(db_url, monkeypatch):
    from retrieval.retriever import Retriever
    from retrieval.search import Hit
    from storage import TextHit

    store, doc = _manual_store(db_url)
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


def test_citations_name_the_matching_passage_page(tome_tiny, tmp_path):
    pages = ["The harbour master keeps the ledgers in the stone tower by the quay.",
             "The lighthouse keeper owns a tame falcon named Ossian.",
             "Ships pay their dues each spring at the custom house."]
    r = tome_tiny.ingest(make_pdf(tmp_path / "h.pdf", pages, title="Harbour"))
    segs = tome_tiny.store.segments(r.document.id)
    assert segs[0].page_start == 1 and segs[0].page_end >= 2  # one segment holds several pages
    final = list(tome_tiny.ask([r.document.id], "What is the falcon called?", max_new_tokens=2))[-1]
    top = final.sources[0]
    assert (top.page_start, top.page_end) == (2, 2) and top.label() == "Harbour, p. 2"
    assert "Ossian" in top.snippet and "falcon" in top.terms
    stored = tome_tiny.store.messages(final.conversation_id)[1].stats["sources"][0]
    assert stored["page_start"] == stored["page_end"] == 2 and "falcon" in stored["terms"]


def test_prompt_labels_each_page_of_a_segment():
    from retrieval.prompt import Passage, Selection, build_messages

    seg = Seg(0, 10, 3, 4, text="First page text.\n\nSecond page text.")
    p = Passage("Book", seg, 0.5, breaks=((0, 3), (18, 4)))
    assert p.labelled() == "[Book, p. 3]\nFirst page text.\n\n[p. 4]\nSecond page text."
    system = build_messages(Selection([p], []), "q")[0]["content"]
    assert "[Book, p. 3]" in system and "say that they do not" in system
    assert Passage("Book", seg).labelled().startswith("[Book, pp. 3-4]\n")


def test_snippet_highlighting_escapes_before_marking():
    from ui.handlers import highlight

    out = highlight("Call <b>read.table</b> & amp it; Table too", ["table", "amp", "b"])
    assert "<b>" not in out and "&lt;<mark>b</mark>&gt;" in out
    assert out.count("<mark>table</mark>") == 2 - 1 and "<mark>Table</mark>" in out
    assert "&amp;" in out and "<mark>amp</mark> it" in out
    assert highlight("x < y", []) == "x &lt; y"
