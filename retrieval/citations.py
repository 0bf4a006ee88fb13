"""Citations: which book and pages an answer's context came from, with a short quote."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from retrieval.prompt import Passage

SNIPPET_CHARS = 200

_WORD = re.compile(r"\w{3,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


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

    @property
    def pages(self) -> str:
        return f"p. {self.page_start}" if self.page_start == self.page_end else f"pp. {self.page_start}-{self.page_end}"

    def label(self) -> str:
        return f"{self.title}, {self.pages}"

    def as_dict(self) -> dict:
        """What is stored with the answer's message (JSON)."""
        return {"document_id": self.document_id, "title": self.title, "page_start": self.page_start,
                "page_end": self.page_end, "segment": self.segment, "label": self.label(),
                "score": None if self.score is None else round(self.score, 4), "snippet": self.snippet}


def snippet(text: str, question: str = "") -> str:
    """A short quote of a segment: from the sentence sharing most words with the question (else its start)."""
    flat = " ".join(text.split())
    asked = {w.lower() for w in _WORD.findall(question)}
    sentences = _SENTENCE.split(flat)
    best = max(range(len(sentences)), key=lambda i: (len(asked & {w.lower() for w in _WORD.findall(sentences[i])}), -i))
    quote = " ".join(sentences[best:])
    lead = "… " if best else ""
    return lead + (quote if len(quote) <= SNIPPET_CHARS else quote[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " …")


def cite(passages: Iterable[tuple[int, Passage]], question: str = "") -> list[Source]:
    """Every (document id, passage) used, best score first (document order among equals): the citations."""
    out = [Source(doc_id, p.title, p.segment.page_start, p.segment.page_end, snippet(p.segment.text, question),
                  p.score, getattr(p.segment, "index", None)) for doc_id, p in passages]
    return sorted(out, key=lambda s: -s.score if s.score is not None else float("inf"))
