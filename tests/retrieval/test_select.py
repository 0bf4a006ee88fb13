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
