"""A narrower second read: each book's best-matching page alone.

A small reader (Qwen2.5-0.5B) that finds nothing restates the question
(``tome.doubt``). On the real manuals the page it needed was usually in front
of it, first among its cited sources, inside ~3,000 tokens of other text; with
that page alone the same model answers more often (docs/RESULTS.md, "the gold
page(s) alone"). So an answer that restates the question is asked again over
the page of each book's best passage, and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Sequence

from retrieval.prompt import Passage, Selection, page_parts


@dataclass(frozen=True)
class PageText:
    """One page of a book, cut from its stored segments (a ``TextSegment`` for the prompt)."""

    text: str
    page_start: int
    page_end: int
    index: int  # the segment holding the page's first part (the citation's segment)
    tokens: int

    @property
    def n_tokens(self) -> int:
        return self.tokens


def page_text(ranking, doc_id: int, page: int, segments: Sequence) -> str:
    """The text of ``page`` of a document: its part of every segment it spans, in order.

    ``ranking.page_breaks`` says where each page starts inside a segment (from the passages).
    """
    parts = []
    for seg in segments:
        if not seg.page_start <= page <= seg.page_end:
            continue
        breaks = ranking.page_breaks(doc_id, seg.index) or ((0, seg.page_start),)
        parts += [t for p, t in page_parts(seg.text, breaks) if p == page]
    return "\n".join(parts)


def best_per_book(ranking, doc_ids, books: int, per_book: int,
                  key: Callable[[object], Hashable] = id) -> Iterator:
    """The ranking's hits, best first: at most ``per_book`` of each book (hits with distinct ``key``s), from
    the first ``books`` of ``doc_ids`` in order of their best hit."""
    seen: dict[int, list] = {}  # document id -> the keys of its hits taken
    for h in ranking.hits:  # best first
        have = seen.get(h.document_id)
        if have is None and len(seen) < books and h.document_id in doc_ids:
            have = seen[h.document_id] = []
        k = key(h)
        if have is None or len(have) >= per_book or k in have:
            continue
        have.append(k)
        yield h
        if len(seen) >= books and all(len(p) >= per_book for p in seen.values()):
            return


def best_pages(ranking, titles: dict[int, str], segments_of: Callable[[int], Sequence],
               count: Callable[[str], int], books: int = 2, pages: int = 1) -> tuple[Selection, dict[int, int]]:
    """The pages of each book's ``pages`` best passages (distinct pages; books in order of their best
    passage, at most ``books``), as a selection, best passage first.

    Returns the selection and its owner map (id(segment) -> document id), as ``Answerer.choose`` does.
    """
    passages, owner = [], {}
    for h in best_per_book(ranking, titles, books, pages, key=lambda h: h.page_start):
        text = page_text(ranking, h.document_id, h.page_start, segments_of(h.document_id))
        if not text:
            continue
        seg = PageText(text, h.page_start, h.page_start, h.index, count(text))
        passages.append(Passage(titles[h.document_id], seg, h.score, match=h, breaks=((0, h.page_start),)))
        owner[id(seg)] = h.document_id
    return Selection(passages, []), owner


def narrower(selection: Selection, narrow: Selection) -> bool:
    """True when ``narrow`` holds less text than ``selection`` (else a second read would see the same)."""
    return bool(narrow.passages) and narrow.tokens < selection.tokens

