"""Segments -> passages: overlapping windows of at most 200 word pieces of the embedder, one page each.

A 1,024-token segment is too long for all-MiniLM-L6-v2 (``max_seq_length``
256 word pieces: the rest of the segment would be cut off unseen), so each
segment is cut into passages the embedder reads whole. A passage never
crosses a page break, so it has exactly one page, which is what a citation
names; its character span is within its segment's text.

Page breaks inside a segment come from the document's pages (ingestion has
them) through ``page_breaks``; without them (a document stored before
passages existed whose original is gone) ``estimated_breaks`` spreads the
segment's pages over its text by length.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

MAX_PIECES = 200  # word pieces per passage (the embedder reads up to 256 with [CLS]/[SEP])
OVERLAP = 50  # word pieces shared by consecutive passages of a page, so a sentence cut by one is whole in the next

PAGE_SEPARATOR = "\n\n"  # as ingest.segments joins pages


@dataclass(frozen=True)
class PassageSpan:
    """A passage of a document: where it is (segment, page, characters within the segment's text)."""

    index: int  # ordinal within the document
    segment: int  # the segment's index
    page: int  # 1-based page
    start: int  # character span within the segment's text
    end: int
    text: str


Breaks = list[tuple[int, int]]  # (character offset within the segment's text, page starting there), ascending


def page_breaks(pages: Sequence, segments: Sequence) -> list[Breaks]:
    """For each segment, where each of its pages starts within its text (exact: from the document's pages).

    ``pages``: objects with ``number`` and ``text`` (ingest.pages.Page), as given to
    ``ingest.segments.split_segments``; ``segments``: what it returned (in order).
    """
    texts, starts, numbers, pos = [], [], [], 0
    for p in pages:
        if not p.text:
            continue
        starts.append(pos)
        numbers.append(p.number)
        texts.append(p.text)
        pos += len(p.text) + len(PAGE_SEPARATOR)
    full = PAGE_SEPARATOR.join(texts)
    out, cursor = [], 0
    for seg in segments:
        c0 = full.find(seg.text, cursor) if seg.text else -1
        if c0 < 0:  # not found (should not happen): fall back to the estimate
            out.append(estimated_breaks(seg.text, seg.page_start, seg.page_end))
            continue
        c1 = c0 + len(seg.text)
        cursor = c1
        i = max(0, bisect.bisect_right(starts, c0) - 1)
        breaks = [(0, numbers[i])]
        for j in range(i + 1, len(starts)):
            if starts[j] >= c1:
                break
            breaks.append((starts[j] - c0, numbers[j]))
        out.append(breaks)
    return out


def estimated_breaks(text: str, page_start: int, page_end: int) -> Breaks:
    """Page starts spread over ``text`` by length, moved to the nearest paragraph break when one is close."""
    n_pages = page_end - page_start + 1
    if n_pages <= 1 or not text:
        return [(0, page_start)]
    breaks = [(0, page_start)]
    for k in range(1, n_pages):
        target = len(text) * k // n_pages
        left = text.rfind(PAGE_SEPARATOR, 0, target)
        right = text.find(PAGE_SEPARATOR, target)
        cands = [c + len(PAGE_SEPARATOR) for c in (left, right) if c >= 0]
        at = min(cands, key=lambda c: abs(c - target)) if cands else target
        if abs(at - target) > len(text) // (2 * n_pages):
            at = target
        breaks.append((max(at, breaks[-1][0] + 1), page_start + k))
    return breaks


def split_passages(text: str, breaks: Breaks, tokenizer, segment: int = 0, first_index: int = 0,
                   max_pieces: int = MAX_PIECES, overlap: int = OVERLAP) -> list[PassageSpan]:
    """Cut one segment's ``text`` into passages of at most ``max_pieces`` word pieces of ``tokenizer``.

    Each page's part of the segment is cut separately (a passage has one page);
    consecutive passages of a page share ``overlap`` word pieces.
    """
    if overlap >= max_pieces:
        raise ValueError("overlap must be smaller than max_pieces")
    out: list[PassageSpan] = []
    bounds = [b for b, _ in breaks] + [len(text)]
    for (b0, page), b1 in zip(breaks, bounds[1:]):
        part = text[b0:b1]
        if not part.strip():
            continue
        offsets = [o for o in tokenizer(part, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
                   ["offset_mapping"] if o[1] > o[0]]
        if not offsets:
            continue
        step = max_pieces - overlap
        start = 0
        while True:
            end = min(start + max_pieces, len(offsets))
            c0, c1 = b0 + offsets[start][0], b0 + offsets[end - 1][1]
            out.append(PassageSpan(first_index + len(out), segment, page, c0, c1, text[c0:c1]))
            if end >= len(offsets):
                break
            start += step
    return out


def make_passages(segments: Sequence, tokenizer, breaks: Sequence[Breaks] | None = None) -> list[PassageSpan]:
    """Every passage of a document's ``segments`` (objects with index, text, page_start, page_end), in order."""
    out: list[PassageSpan] = []
    for k, seg in enumerate(segments):
        b = breaks[k] if breaks is not None else estimated_breaks(seg.text, seg.page_start, seg.page_end)
        out += split_passages(seg.text, b, tokenizer, seg.index, len(out))
    return out
