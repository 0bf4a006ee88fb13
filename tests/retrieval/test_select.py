"""The selector: which segments go into the context, within a budget, in document order."""
import numpy as np
from tests.conftest import Seg


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
    sel = select_segments([("A", a), ("B", b)], scores, budget=75, neighbours=1, per_book=False)
    got = [(p.title, p.segment.index) for p in sel.passages]
    # one global ranking: hits A7 (0.9), B4 (0.8), A2 (0.5), each with +-1 while it fits; 7 segments = 70 <= 75
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
    plain = select_segments([("A", a), ("B", b)], scores, budget=30, neighbours=1, per_book=False)
    assert [(p.title, p.segment.index) for p in plain.passages] == [("A", 1), ("A", 2), ("A", 3)]  # B never in
    both = select_segments([("A", a), ("B", b)], scores, budget=30, neighbours=1, every_book=True, per_book=False)
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


def _two_books(store):
    """Book A: five segments that all match the question's words; book B: one segment that matches one word
    (and twelve store lists, so that the full text's word weights are those of a library)."""
    from ingest.segments import Segment

    a = [f"Harbour tide tables, part {i}: high tide at the harbour comes twice a day; the harbour tide "
         f"tables give each high tide and low tide at the harbour, and the keeper reads them each day." for i in range(5)]
    b = ["The lamp is cleaned every morning and the brass is polished.",
         "Every evening the keeper climbs up to light the lamp.",
         "Fog signals sound every thirty seconds while the fog lasts."] + [
        f"Stores list {i}: paint, rope, oil for the lamp, spare glass and bread for the week." for i in range(12)]

    def add(sha, title, texts):
        segs = [Segment(i, t, i + 1, i + 1, 100 * i, 100 * (i + 1)) for i, t in enumerate(texts)]
        return store.add_document(sha256=sha * 64, title=title, filename=f"{title}.pdf", kind="pdf",
                                  pages=len(texts), segments=segs)

    return add("a", "Harbour", a), add("b", "Lighthouse", b)


def test_each_book_gets_its_share_even_when_another_book_scores_higher(db_url):
    """A two-book question: book A's passages all outscore book B's, yet B's best segment is in the context."""
    from retrieval.retriever import Retriever
    from retrieval.select import select_segments
    from storage import Store

    store = Store(db_url)
    docs = list(_two_books(store))
    r = Retriever(store, decompose=False)  # the question whole: searched by part, B's page would rank first
    question = "When is high tide at the harbour, and what does the keeper do?"
    ranking = r.rank(docs, question)
    scores = ranking.segment_scores([d.id for d in docs])
    a, b = (scores[d.id] for d in docs)
    assert min(a.values()) > max(b.values())  # every segment of A ranks above B's best
    assert max(b, key=b.get) == 1  # B's best: what the keeper does
    books = [(d.title, store.segments(d.id)) for d in docs]
    reach = [ranking.reach(d.id, [s.text for s in segs]) for d, (_, segs) in zip(docs, books)]

    def chosen(**kw):
        sel = select_segments(books, [a, b], 300, 1, reach=reach, **kw)  # room for 3 of the 100-token segments
        assert sel.tokens <= 300
        return [(p.title, p.segment.index) for p in sel.passages]

    alone = chosen(per_book=False)
    assert len(alone) == 3 and {t for t, _ in alone} == {"Harbour"}  # one global ranking: A fills the budget
    shared = chosen()
    assert ("Lighthouse", 1) in shared and sum(t == "Harbour" for t, _ in shared) >= 1
    assert [t for t, _ in shared] == sorted(t for t, _ in shared)  # books in the order given
    store.close()


def test_unused_share_passes_on_to_the_other_books():
    from retrieval.select import select_segments

    a = [Seg(i, 10) for i in range(6)]
    b = [Seg(0, 10), Seg(1, 10)]
    # B has one hit only (10 of its 30): the rest of its share goes to A's next hits
    sel = select_segments([("A", a), ("B", b)], [{i: 0.9 - 0.1 * i for i in range(6)}, {1: 0.2}], 60, neighbours=0)
    assert [(p.title, p.segment.index) for p in sel.passages] == [("A", i) for i in range(5)] + [("B", 1)]
    # three books, the weakest book first in line for what the best books leave
    c = [Seg(i, 10) for i in range(4)]
    sel = select_segments([("A", a), ("B", c), ("C", c)], [{i: 0.9 for i in range(6)}, {0: 0.5, 1: 0.4},
                                                             {0: 0.3, 1: 0.2, 2: 0.1}], 60, neighbours=0)
    got = [(p.title, p.segment.index) for p in sel.passages]
    assert sel.tokens == 60 and {t for t, _ in got} == {"A", "B", "C"}
    assert got.count(("B", 0)) and got.count(("C", 0)) and got.count(("C", 1))
