"""Pages -> segments of at most ``max_tokens`` tokens that remember their page range.

A segment is the unit that is later compressed into memories and cited in
answers, so it ends at a paragraph or sentence boundary where one is near.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Sequence

from ingest.pages import Page

PAGE_SEPARATOR = "\n\n"
_SENTENCE_END = re.compile(r"[.!?;:][\"')\]]?\s")


@dataclass(frozen=True)
class Segment:
    index: int
    text: str
    page_start: int  # first page (1-based) the segment's text comes from
    page_end: int  # last page, inclusive
    token_start: int  # token span in the whole document's tokenisation
    token_end: int
    token_ids: tuple[int, ...] = field(default=(), repr=False, compare=False)  # what the encoder reads

    @property
    def n_tokens(self) -> int:
        return self.token_end - self.token_start


def split_segments(pages: Sequence[Page], tokenizer, max_tokens: int = 1024) -> list[Segment]:
    """Tokenise the whole document once and cut it into segments of <= max_tokens tokens."""
    if max_tokens < 8:
        raise ValueError("max_tokens must be at least 8")
    texts, starts, pos = [], [], 0
    for page in pages:
        if not page.text:
            continue
        starts.append(pos)
        texts.append(page.text)
        pos += len(page.text) + len(PAGE_SEPARATOR)
    numbers = [p.number for p in pages if p.text]
    full = PAGE_SEPARATOR.join(texts)
    if not full:
        return []
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    ids: list[int] = enc["input_ids"]
    n = len(offsets)

    def page_of(char: int) -> int:
        return numbers[max(0, bisect.bisect_right(starts, char) - 1)]

    segments, start = [], 0
    while start < n:
        end = min(start + max_tokens, n)
        if end < n and n - end < max_tokens // 4:
            # A short tail would follow: share what is left between the last two segments instead. A tail of
            # 46 tokens keeps 6 memory slots at 8x, too few for a sentence (a pass key at the end was lost).
            end = start + (n - start + 1) // 2
        if end < n:
            end = _best_cut(full, offsets, start, end)
        c0, c1 = offsets[start][0], offsets[end - 1][1]
        raw = full[c0:c1]
        text = raw.strip()
        if text:  # pages from the stripped text: a cut inside the page separator must not add a page
            c0 += len(raw) - len(raw.lstrip())
            c1 -= len(raw) - len(raw.rstrip())
        segments.append(Segment(
            index=len(segments), text=text,
            page_start=page_of(c0), page_end=page_of(max(c0, c1 - 1)),
            token_start=start, token_end=end, token_ids=tuple(ids[start:end]),
        ))
        start = end
    return segments


def _best_cut(full: str, offsets: list[tuple[int, int]], start: int, end: int) -> int:
    """Latest cut in the last quarter of the window at a paragraph, else a sentence, else ``end``."""
    lowest = start + max(1, (end - start) * 3 // 4)
    sentence = None
    for j in range(end, lowest, -1):  # cut before token j
        gap = full[offsets[j - 1][1] - 1: offsets[j][0] + 1]
        if "\n\n" in gap:
            return j
        if sentence is None and (_SENTENCE_END.search(gap) or "\n" in gap):
            sentence = j
    return sentence or end
