"""Pages -> segments with the real SmolLM2 tokenizer: token budget, spans, page ranges, cut points."""
import pytest

from ingest import Page, split_segments
from ingest.segments import PAGE_SEPARATOR

SENTENCE = "The keeper walked along the sea wall and counted the boats."


def _ids(tokenizer, pages):
    full = PAGE_SEPARATOR.join(p.text for p in pages if p.text)
    return tokenizer(full, add_special_tokens=False)["input_ids"]


def _marked_pages(n=6, per_page=5):
    """Page i holds sentences that all start with the marker word 'Page{i}' (short, so cuts find sentence ends)."""
    return [Page(i, " ".join(f"Page{i} walked on the wall." for _ in range(per_page))) for i in range(1, n + 1)]


@pytest.mark.parametrize("max_tokens", [8, 17, 64, 100])
def test_segments_respect_the_budget_and_tile_the_token_stream(tokenizer, max_tokens):
    pages = [Page(i, " ".join([SENTENCE] * (i + 2)) + "\n\n" + "Another paragraph here, and more words follow!")
             for i in range(1, 6)]
    ids = _ids(tokenizer, pages)
    segs = split_segments(pages, tokenizer, max_tokens=max_tokens)
    assert len(segs) >= len(ids) // max_tokens and len(segs) > 1
    assert [s.index for s in segs] == list(range(len(segs)))
    assert segs[0].token_start == 0 and segs[-1].token_end == len(ids)
    for a, b in zip(segs, segs[1:]):
        assert a.token_end == b.token_start
    for s in segs:
        assert 0 < s.n_tokens == s.token_end - s.token_start <= max_tokens
        assert list(s.token_ids) == ids[s.token_start:s.token_end]
        assert s.text and s.text == s.text.strip()
        assert 1 <= s.page_start <= s.page_end <= 5


def test_one_small_document_is_one_segment(tokenizer):
    pages = [Page(1, "Short first page."), Page(2, "Short second page.")]
    (seg,) = split_segments(pages, tokenizer, max_tokens=1024)
    assert seg.text == "Short first page.\n\nShort second page."
    assert (seg.index, seg.page_start, seg.page_end, seg.token_start) == (0, 1, 2, 0)
    assert seg.token_end == len(_ids(tokenizer, pages))


def test_page_spans_match_the_pages_in_each_segment(tokenizer):
    pages = _marked_pages()
    segs = split_segments(pages, tokenizer, max_tokens=64)
    assert len(segs) >= 4
    for s in segs:
        present = [p.number for p in pages if f"Page{p.number}" in s.text]
        assert present, s.text
        assert (s.page_start, s.page_end) == (min(present), max(present)), (s.index, s.text)
    # together the segments name every page, in order
    assert segs[0].page_start == 1 and segs[-1].page_end == len(pages)
    assert all(a.page_end <= b.page_start for a, b in zip(segs, segs[1:]))


def test_a_cut_at_a_page_break_does_not_claim_the_previous_page(tokenizer):
    """A segment starting right after a page break starts on the new page, not the one before."""
    pages = _marked_pages(n=6, per_page=5)
    segs = split_segments(pages, tokenizer, max_tokens=64)
    fresh = [(prev, s) for prev, s in zip(segs, segs[1:])
             if s.text.split()[0] not in prev.text]  # s begins with a page prev has none of
    assert fresh, "the test needs at least one cut at a page break"
    for prev, s in fresh:
        n = int(s.text.split()[0].removeprefix("Page"))
        assert prev.page_end == n - 1
        assert s.page_start == n


def test_a_segment_spanning_pages_two_and_three(tokenizer):
    pages = [Page(1, ""), Page(2, "The second page begins the story."), Page(3, "The third page ends it.")]
    (seg,) = split_segments(pages, tokenizer, max_tokens=256)
    assert (seg.page_start, seg.page_end) == (2, 3)
    assert seg.text == "The second page begins the story.\n\nThe third page ends it."


def test_empty_pages_in_between_are_spanned_but_keep_numbers(tokenizer):
    pages = [Page(4, "Page four text."), Page(5, ""), Page(6, ""), Page(7, "Page seven text.")]
    (seg,) = split_segments(pages, tokenizer, max_tokens=256)
    assert (seg.page_start, seg.page_end) == (4, 7)
    pages[0] = Page(4, "Page four text, in a paragraph long enough to fill one segment.")
    segs = split_segments(pages, tokenizer, max_tokens=16)
    assert [(s.text, s.page_start, s.page_end) for s in segs] == [
        (pages[0].text, 4, 4), ("Page seven text.", 7, 7)]  # cut at the page break: no empty pages claimed


def test_cuts_prefer_paragraph_boundaries(tokenizer):
    paragraphs = [f"Paragraph {k} opens the scene. The tide rose over the black rocks. "
                  f"Gulls circled above the boats. That was paragraph {k}." for k in range(12)]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in paragraphs]
    assert all(25 <= n <= 40 for n in lengths), lengths  # ~30 tokens each
    pages = [Page(1, "\n\n".join(paragraphs[:6])), Page(2, "\n\n".join(paragraphs[6:]))]
    segs = split_segments(pages, tokenizer, max_tokens=100)
    assert len(segs) >= 4
    for s in segs:
        assert s.text.endswith("."), s.text
        assert s.text.startswith("Paragraph "), s.text  # never starts mid-paragraph
        first = int(s.text.split()[1])
        last = int(s.text.rstrip(".").split()[-1])
        # whole paragraphs only: the text is exactly paragraphs first..last
        assert s.text == "\n\n".join(paragraphs[first:last + 1])
        assert 2 <= last - first + 1 <= 3  # a 100-token window holds about 3 paragraphs of ~30 tokens


def test_cuts_fall_back_to_sentence_ends(tokenizer):
    text = " ".join(f"Sentence {k} tells of the sea and the wind." for k in range(40))  # one paragraph
    segs = split_segments([Page(1, text)], tokenizer, max_tokens=50)
    assert len(segs) > 3
    for s in segs:
        assert s.text.startswith("Sentence ") and s.text.endswith("wind."), s.text


def test_without_any_boundary_segments_are_full(tokenizer):
    text = " ".join(["harbour"] * 500)
    segs = split_segments([Page(1, text)], tokenizer, max_tokens=64)
    total = len(_ids(tokenizer, [Page(1, text)]))
    assert [s.n_tokens for s in segs[:-1]] == [64] * (len(segs) - 1)
    assert segs[-1].token_end == total and 0 < segs[-1].n_tokens <= 64


def test_no_text_gives_no_segments(tokenizer):
    assert split_segments([], tokenizer) == []
    assert split_segments([Page(1, ""), Page(2, "")], tokenizer) == []


@pytest.mark.parametrize("max_tokens", [0, 1, 7])
def test_tiny_budget_is_refused(tokenizer, max_tokens):
    with pytest.raises(ValueError, match="at least 8"):
        split_segments([Page(1, "Some text.")], tokenizer, max_tokens=max_tokens)


@pytest.mark.parametrize("max_tokens", [64, 100, 256])
def test_no_short_tail_the_last_two_segments_share_what_is_left(tokenizer, max_tokens):
    """A document just over a whole number of segments ends in two halves, not in a stub of a few tokens
    (a 46-token last segment keeps 6 memory slots at 8x: a pass key there was lost)."""
    text = " ".join(f"Sentence number {i} walks on." for i in range(400))
    ids = _ids(tokenizer, [Page(1, text)])
    for n in (max_tokens * 2 + 5, max_tokens * 3 + max_tokens // 8, len(ids)):
        cut = tokenizer.decode(ids[:n])
        pages = [Page(1, cut)]
        total = len(_ids(tokenizer, pages))
        segs = split_segments(pages, tokenizer, max_tokens=max_tokens)
        assert segs[-1].token_end == total and all(s.n_tokens <= max_tokens for s in segs)
        if len(segs) > 1:
            assert segs[-1].n_tokens >= max_tokens // 8, [s.n_tokens for s in segs]
