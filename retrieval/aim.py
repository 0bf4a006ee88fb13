"""A passage re-cut around the question's best sentence, at the same length.

Passages are fixed windows of a page (``retrieval.passages``), ranked whole. In a manual the
words that match a question (a heading, an option's name) often end one window and the answer
follows in the next sentence: several of compressed mode's real-manual misses with the gold page's
passage in front of the reader had the answer just past the passage's edge ("The value is
specified in milliseconds, so a" — cut before "default 500"; docs/COMPRESSION.md, "Fourteenth run").
So the excerpt compressed mode reads as text is moved, within its page and near where it was, to
start shortly before the sentence that shares the most rare question words, keeping its length
(so the first token costs what it did).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from storage.fulltext import terms

LEAD = 0.2  # share of the window placed before the best sentence (a heading or the sentence before it)
REACH = 0.5  # how far (in window lengths) beyond the passage's ends the best sentence may lie
# Endings dropped so that a question's word meets its forms in the text ("computing" ~ "computed" ~
# "compute", "values" ~ "value"); a light stemmer, Python has none built in.
_SUFFIX = re.compile(r"(?:ing|ed|es|(?<!s)s)$")

# A sentence ends at . ! ? or : before whitespace, or at a blank line; a PDF's line breaks inside a
# sentence do not end it.
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+|\n\s*\n")


@dataclass(frozen=True)
class Span:
    """Characters [start, end) of a text."""

    start: int
    end: int


def _key(word: str) -> str:
    stem = _SUFFIX.sub("", word).removesuffix("e")
    return stem if len(stem) >= 3 else word


def sentences(text: str, lo: int, hi: int) -> list[Span]:
    """The sentences of ``text[lo:hi]`` as spans of ``text`` (whitespace between them left out)."""
    out, a = [], lo
    for m in _SENTENCE_END.finditer(text, lo, hi):
        if m.start() > a:
            out.append(Span(a, m.start()))
        a = m.end()
    if hi > a:
        out.append(Span(a, hi))
    return out


def best_sentence(text: str, spans: list[Span], question: str) -> Span | None:
    """The span sharing the most question words, each weighted by how rare it is among ``spans``
    (inverse document frequency over them); None when no span shares a word."""
    query = {_key(w) for w in terms(question)}
    if not query or not spans:
        return None
    words = [{_key(w) for w in terms(text[s.start:s.end])} & query for s in spans]
    df = {q: sum(q in w for w in words) for q in query}
    idf = {q: math.log(1 + len(spans) / df[q]) for q in query if df[q]}
    scores = [sum(idf[q] for q in w) for w in words]
    best = max(range(len(spans)), key=lambda i: (scores[i], -i))
    return spans[best] if scores[best] > 0 else None


def aim(text: str, passage: Span, page: Span, question: str, scale: float = 1.0) -> Span:
    """Where to cut a window of ``passage``'s length (times ``scale``) from ``text`` for ``question``: starting
    a little before the best-matching sentence near the passage, inside ``page``; the passage itself (its
    first ``scale`` of it) when no sentence there shares a word with the question or the page is no longer
    than the window."""
    full = passage.end - passage.start
    size = min(full, max(1, int(full * scale))) if full > 0 else 0
    if page.end - page.start <= size or size <= 0:
        return _head(text, passage, size)
    reach = int(REACH * full)  # the sentences near the whole passage, whatever the window's length
    lo, hi = max(page.start, passage.start - reach), min(page.end, passage.end + reach)
    spans = sentences(text, lo, hi)
    best = best_sentence(text, spans, question)
    if best is None:
        return _head(text, passage, size)
    # The best sentence whole where it fits, then what follows it; before it at most LEAD of the window.
    lead = min(int(LEAD * size), max(0, size - (best.end - best.start)))
    start = max(page.start, best.start - lead)
    before = [s.start for s in spans if start <= s.start <= best.start]
    start = before[0] if before else best.start  # begin at a sentence, not inside one
    start = _word_start(text, min(start, page.end - size), page)  # near the page's end: the window ends there
    return Span(start, _word_end(text, start, min(page.end, start + size), page))


def _head(text: str, passage: Span, size: int) -> Span:
    """The first ``size`` characters of ``passage`` (all of it where it is no longer), ending between words."""
    if size >= passage.end - passage.start:
        return passage
    return Span(passage.start, _word_end(text, passage.start, passage.start + size, passage))


def _word_end(text: str, start: int, end: int, page: Span) -> int:
    """``end``, moved back to the last space inside [start, end) where the window stops before the page does (a
    window of one word stays cut)."""
    if end >= page.end:
        return end
    return next((i for i in range(end, start, -1) if text[i].isspace()), end)


def _word_start(text: str, i: int, page: Span) -> int:
    """``i``, or the start of the next word where ``i`` falls inside one (the page's start counts as one)."""
    if i <= page.start or text[i - 1].isspace():
        return max(i, page.start)
    return next((j + 1 for j in range(i, page.end - 1) if text[j].isspace()), i)


def aimed(hit, page: str, question: str, scale: float = 1.0) -> str:
    """The text of ``hit`` (a ``retrieval.retriever.Retrieved`` passage) re-cut for ``question`` by ``aim``
    within ``page``, the whole text of its page (``retrieval.narrow.page_text``); the hit's own text where
    it is not found there."""
    own = hit.text.strip()
    at = page.find(own)
    if not own or at < 0:
        return hit.text
    s = aim(page, Span(at, at + len(own)), Span(0, len(page)), question, scale)
    return page[s.start:s.end].strip()
