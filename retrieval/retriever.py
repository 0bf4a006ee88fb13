"""The retriever the answer path calls: embeddings made (lazily) per document, scores per segment.

It reads the store's segments and embeddings, keeps them current for the
configured embedder and asks ``retrieval.search`` for the closest segments.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from retrieval.embed import load_embedder, to_bytes
from retrieval.search import VectorSearch
from storage import DocumentInfo, Store

log = logging.getLogger("tome.retrieval")

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Retrieved:
    """A segment found for a query: its book, text, pages and score."""

    document_id: int
    title: str
    index: int
    text: str
    page_start: int
    page_end: int
    score: float


class Retriever:
    """Similarity of questions to the stored segments of chosen books."""

    def __init__(self, store: Store, embedder: str = "minilm", index_threshold: int = 100_000):
        self.store = store
        self.embedder_name = embedder
        self.vectors = VectorSearch(store, index_threshold=index_threshold)
        self._embedder = None
        self._lock = threading.Lock()

    @property
    def embedder(self):
        """The segment/question embedder (sentence-transformers), loaded on first use."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = load_embedder(self.embedder_name)
        return self._embedder

    def embed(self, segments, name: str, report: Progress) -> list[bytes]:
        """One embedding per segment (for choosing segments and citing pages), with progress in [0.1, 0.15]."""
        n = len(segments)

        def step(done: int, _total: int) -> None:
            report(0.1 + 0.05 * done / n, f"{name}: embedded {done}/{n} segments")

        vectors = self.embedder.encode([s.text for s in segments], progress=step)
        return [to_bytes(v) for v in vectors]

    def embedded(self, docs: Sequence[DocumentInfo]) -> list[DocumentInfo]:
        """``docs`` with embeddings from the current embedder, made now where missing or stale.

        Documents stored before embeddings existed (or embedded by another model)
        are embedded lazily, on the first question that uses them: their text is
        in the store, so this costs one pass of the small embedder, not a re-ingestion.
        """
        out = []
        for d in docs:
            if d.embedder != self.embedder.name:
                log.info("embedding %s with %s (first use)", d.title, self.embedder.name)
                d = self.store.set_embeddings(d.id, self.embedder.name,
                                              self.embed(self.store.segments(d.id), d.title, lambda *_: None))
            out.append(d)
        return out

    def scores(self, docs: Sequence[DocumentInfo], question: str, k: int | None = None) -> dict[int, dict[int, float]]:
        """Similarity of ``question`` to the segments of ``docs``: {document id: {segment index: cosine}}.

        ``k``: only the best k segments (default: all of them, up to the vector index's k limit).
        """
        docs = self.embedded(docs)
        n = self.store.count_segments([d.id for d in docs])
        hits = self.vectors.search(self.embedder.encode_one(question), docs, k or n)
        out: dict[int, dict[int, float]] = {d.id: {} for d in docs}
        for h in hits:
            out[h.document_id][h.index] = h.score
        return out

    def retrieve(self, docs: Sequence[DocumentInfo], query: str, k: int = 4) -> list[Retrieved]:
        """The ``k`` segments of ``docs`` closest to ``query``, best first (no language model needed)."""
        scores = self.scores(docs, query, k)
        out = []
        for d in docs:
            segs = self.store.segments(d.id)
            out += [Retrieved(d.id, d.title, j, segs[j].text, segs[j].page_start, segs[j].page_end, sc)
                    for j, sc in scores[d.id].items()]
        return sorted(out, key=lambda r: -r.score)
