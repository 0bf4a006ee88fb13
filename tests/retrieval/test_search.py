"""Vector search over stored embeddings: brute force and the sqlite-vec index agree."""
import numpy as np
from tests.conftest import Seg


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
