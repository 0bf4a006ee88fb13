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

    def spy(books, scores, budget, neighbours=1):
        calls.append((len(books), budget))
        return real(books, scores, budget, neighbours)

    monkeypatch.setattr(tome.answer, "select_segments", spy)  # the answer path's one call of the selector
    r = tome_tiny.ingest(make_pdf(tmp_path / "x.pdf", ["Some text about tides.", "More about gulls."]))
    list(tome_tiny.ask([r.document.id], "gulls?", max_new_tokens=2, mode=mode))
    assert len(calls) == 1 and calls[0][0] == 1 and calls[0][1] > 0


def test_documents_without_embeddings_are_embedded_on_first_use(tome_tiny):
    from ingest.segments import Segment

    segs = [Segment(0, "Nothing here.", 1, 1, 0, 3), Segment(1, "The vault code is 4417.", 2, 2, 3, 9)]
    doc = tome_tiny.store.add_document(sha256="e" * 64, title="Old", filename="old.pdf", kind="pdf", pages=2,
                                       segments=segs)
    assert doc.embedder is None and tome_tiny.store.embeddings(doc.id) == [None, None]
    hits = tome_tiny.retrieve([doc.id], "What is the vault code?", k=1)
    assert [(h.index, h.page_start) for h in hits] == [(1, 2)]
    assert tome_tiny.document(doc.id).embedder == "all-MiniLM-L6-v2"
    assert all(b is not None for b in tome_tiny.store.embeddings(doc.id))
