"""Passages: within one page and the embedder window, page breaks exact."""


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
