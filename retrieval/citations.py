"""Citations: which book and page an answer's context came from, with a short quote around the match.

A segment that was ranked is cited at the page of its best-matching passage
(not the segment's page range), quoting that passage around the words it
shares with the question; ``terms`` are those words, for the UI to highlight.
A segment that came in only as a neighbour keeps its page range and its start.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from retrieval.aim import best_sentence, sentences
from retrieval.prompt import Passage

SNIPPET_CHARS = 200

_WORD = re.compile(r"\w{3,}")


@dataclass(frozen=True)
class Source:
    """One segment an answer's context came from: book, page range, the start of its text, its score."""

    document_id: int
    title: str
    page_start: int
    page_end: int
    snippet: str = ""
    score: float | None = None  # similarity to the question (None: not ranked)
    segment: int | None = None  # the segment's index in its document
    terms: tuple[str, ...] = ()  # the question's words found in the snippet (for highlighting)

    @property
    def pages(self) -> str:
        return f"p. {self.page_start}" if self.page_start == self.page_end else f"pp. {self.page_start}-{self.page_end}"

    def label(self) -> str:
        return f"{self.title}, {self.pages}"

    def as_dict(self) -> dict:
        """What is stored with the answer's message (JSON)."""
        return {"document_id": self.document_id, "title": self.title, "page_start": self.page_start,
                "page_end": self.page_end, "segment": self.segment, "label": self.label(),
                "score": None if self.score is None else round(self.score, 4), "snippet": self.snippet,
                "terms": list(self.terms)}


def snippet(text: str, question: str = "") -> str:
    """A short quote of a segment: from the sentence that shares the most rare question words (stems alike,
    ``retrieval.aim.best_sentence``), else from its start."""
    flat = " ".join(text.split())
    best = best_sentence(flat, sentences(flat, 0, len(flat)), question) if question else None
    start = best.start if best else 0
    quote = flat[start:]
    lead = "… " if start else ""
    return lead + (quote if len(quote) <= SNIPPET_CHARS else quote[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " …")


def terms_in(text: str, question: str) -> tuple[str, ...]:
    """The question's words (3+ letters, not stop words) that occur in ``text``, as they appear in the question."""
    from storage.fulltext import STOPWORDS

    have = {w.lower() for w in _WORD.findall(text)}
    out: list[str] = []
    for w in _WORD.findall(question):
        if w.lower() in have and w.lower() not in STOPWORDS and w.lower() not in (x.lower() for x in out):
            out.append(w)
    return tuple(out)


def cite_one(doc_id: int, p: Passage, question: str = "") -> Source:
    """The citation of one chosen segment: at its best passage's page when it was ranked."""
    m = p.match
    if m is not None:
        quote = snippet(m.text, question)
        return Source(doc_id, p.title, m.page_start, m.page_end, quote, p.score, getattr(p.segment, "index", None),
                      terms_in(quote, question))
    quote = snippet(p.segment.text, question)
    return Source(doc_id, p.title, p.segment.page_start, p.segment.page_end, quote, p.score,
                  getattr(p.segment, "index", None), terms_in(quote, question))


def cite(passages: Iterable[tuple[int, Passage]], question: str = "") -> list[Source]:
    """Every (document id, passage) used, best score first (document order among equals): the citations."""
    out = [cite_one(doc_id, p, question) for doc_id, p in passages]
    return sorted(out, key=lambda s: -s.score if s.score is not None else float("inf"))
