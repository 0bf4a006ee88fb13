"""The retriever the answer path calls: passages scored by meaning and by exact words, fused, per segment.

Each segment is cut into passages of <= 200 word pieces (``retrieval.passages``),
each on one page, with its own vector. A question is matched two ways:

- vectors: cosine of the question to every passage (``retrieval.search``,
  brute force or sqlite-vec);
- full text: the store's one full-text call (FTS5 BM25 on SQLite,
  ``ts_rank_cd`` on PostgreSQL), which finds exact terms such as
  ``read.table`` that embeddings blur;

and the two rankings are fused by reciprocal rank (``retrieval.fusion``). A
question asking two things is searched whole and part by part
(``retrieval.decompose``), a passage keeping its best score. A segment's score
is its best passage's; citations name that passage's page.
Passages are made at ingestion; documents stored before get them on the first
question that uses them (like segment embeddings before them).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from retrieval.decompose import parts as question_parts
from retrieval.embed import load_embedder, to_bytes
from retrieval.fusion import rrf
from retrieval.passages import PassageSpan, make_passages, page_breaks
from retrieval.search import VectorSearch
from storage import DocumentInfo, PassageRecord, Store

log = logging.getLogger("tome.retrieval")

Progress = Callable[[float, str], None]

MODES = ("hybrid", "vector", "lexical")
DEPTH = 200  # passages taken from each ranking before fusion
# Fusion as measured on the real manuals (bench/eval_retrieval.py, docs/RESULTS.md "Retrieval"): full text
# alone beat passage vectors there (gold page in the top 3: 95 % vs 79 %), and RRF's usual k = 60 flattens
# the top ranks so much that the fusion fell below full text (84 %); k = 2 with full text weighted 2:1 keeps
# full text's top 3 (95 %) and lifts the top 5/10 (98 %/100 %) with the vectors' help on paraphrases.
FUSION_K = 2
FUSION_WEIGHTS = (1.0, 2.0)  # (passage vectors, full text)


@dataclass(frozen=True)
class Retrieved:
    """A passage found for a query: its book, segment, page, text and score.

    ``index`` is the segment's index (``passage`` the passage's ordinal); ``page_start``
    and ``page_end`` are both the passage's page. ``start``/``end``: its span in the segment's text.
    """

    document_id: int
    title: str
    index: int
    text: str
    page_start: int
    page_end: int
    score: float
    passage: int | None = None
    start: int = 0
    end: int = 0
    vector: float | None = None  # cosine to the question (None: not in the vector ranking's top)
    lexical: float | None = None  # full-text score (None: no exact words matched)


@dataclass
class Ranking:
    """Passages of the chosen documents ranked for one question, best first, and views of them per segment."""

    hits: list[Retrieved]
    passages: dict[int, list[PassageRecord]] = field(default_factory=dict)  # document id -> its passages

    def segment_scores(self, doc_ids: Sequence[int]) -> dict[int, dict[int, float]]:
        """{document id: {segment index: its best passage's score}}."""
        out: dict[int, dict[int, float]] = {d: {} for d in doc_ids}
        for h in self.hits:
            seg = out.setdefault(h.document_id, {})
            if h.index not in seg:  # hits are best first
                seg[h.index] = h.score
        return out

    def best(self, doc_id: int, segment: int) -> Retrieved | None:
        """The best-ranked passage of a segment, or None when none of its passages was ranked."""
        if not hasattr(self, "_best"):
            self._best: dict[tuple[int, int], Retrieved] = {}
            for h in self.hits:
                self._best.setdefault((h.document_id, h.index), h)
        return self._best.get((doc_id, segment))

    def reach(self, doc_id: int, texts: Sequence[str], neighbours: int = 1, edge: float = 0.2
              ) -> dict[int, tuple[int, int]]:
        """For each ranked segment of a document, the neighbours its best passage calls for: (before, after).

        A passage in the first (last) ``edge`` of its segment's text may continue in
        the previous (next) segment, which then comes with it; one in the middle
        needs neither, so the budget goes to other hits. ``texts``: the segments' texts.
        """
        out = {}
        for j, _ in self.segment_scores([doc_id])[doc_id].items():
            m = self.best(doc_id, j)
            n = len(texts[j]) if 0 <= j < len(texts) else 0
            if m is None or not n or not m.end:
                out[j] = (neighbours, neighbours)
                continue
            out[j] = (neighbours if m.start < edge * n else 0, neighbours if m.end > (1 - edge) * n else 0)
        return out

    def page_breaks(self, doc_id: int, segment: int) -> tuple[tuple[int, int], ...]:
        """(character offset, page) where each page of a segment starts in its text, from its passages."""
        out: list[tuple[int, int]] = []
        for p in self.passages.get(doc_id, ()):
            if p.segment == segment and (not out or out[-1][1] != p.page):
                out.append((p.start, p.page))
        return tuple(out)


class Retriever:
    """Similarity of questions to the stored passages of chosen books."""

    def __init__(self, store: Store, embedder: str = "minilm", index_threshold: int = 100_000,
                 fusion_weights: tuple[float, float] = FUSION_WEIGHTS, fusion_k: int = FUSION_K,
                 decompose: bool = True, run: Callable | None = None):
        self.store = store
        self.embedder_name = embedder
        self.run = run  # how torch work runs (the embedder's, vector search): ``run(fn, *args)``; None: here
        self.vectors = VectorSearch(store, index_threshold=index_threshold)  # whole segments (the old way)
        self.passage_vectors = VectorSearch(store, index_threshold=index_threshold, kind="passages")
        self.fusion_weights = fusion_weights  # (vector, full text) in the reciprocal-rank fusion
        self.rrf_k = fusion_k
        self.decompose = decompose  # also search each part of a two-part question (retrieval.decompose)
        # doc -> its pages (ingest.pages.Page) or None; set by the library, to place page breaks exactly
        # when passages are made for a document stored before they existed
        self.pages_of: Callable[[DocumentInfo], Sequence | None] | None = None
        self._embedder = None
        self._lock = threading.Lock()
        self._passage_lock = threading.Lock()
        self._records: OrderedDict[tuple, list[PassageRecord]] = OrderedDict()
        # full-text searches on a database server, beside the question's embedding (its thread starts with the first)
        self._fulltext = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tome-fulltext")

    def _torch(self, fn, *args):
        """``fn(*args)`` (torch work: vector search) the way ``run`` says."""
        return self.run(fn, *args) if self.run else fn(*args)

    @property
    def embedder(self):
        """The passage/question embedder (sentence-transformers), loaded on first use."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = (load_embedder(self.embedder_name, run=self.run) if self.run
                                      else load_embedder(self.embedder_name))
        return self._embedder

    # -- making vectors -----------------------------------------------------
    def embed(self, segments, name: str, report: Progress) -> list[bytes]:
        """One embedding per segment (its first 256 word pieces), with progress in [0.1, 0.12]."""
        n = len(segments)

        def step(done: int, _total: int) -> None:
            report(0.1 + 0.02 * done / n, f"{name}: embedded {done}/{n} segments")

        vectors = self.embedder.encode([s.text for s in segments], progress=step)
        return [to_bytes(v) for v in vectors]

    def passages_of(self, segments, pages: Sequence | None = None) -> list[PassageSpan]:
        """The passages of a document's segments; exact pages when the document's ``pages`` are given."""
        breaks = page_breaks(pages, segments) if pages else None
        return make_passages(segments, self.embedder.tokenizer, breaks)

    def embed_passages(self, passages: Sequence[PassageSpan], name: str, report: Progress) -> list[bytes]:
        """One vector per passage, with progress in [0.12, 0.15]."""
        n = max(1, len(passages))

        def step(done: int, _total: int) -> None:
            report(0.12 + 0.03 * done / n, f"{name}: embedded {done}/{n} passages")

        return [to_bytes(v) for v in self.embedder.encode([p.text for p in passages], progress=step)]

    def embedded(self, docs: Sequence[DocumentInfo]) -> list[DocumentInfo]:
        """``docs`` with segment embeddings from the current embedder, made now where missing or stale."""
        out = []
        for d in docs:
            if d.embedder != self.embedder.name:
                log.info("embedding %s with %s (first use)", d.title, self.embedder.name)
                d = self.store.set_embeddings(d.id, self.embedder.name,
                                              self.embed(self.store.segments(d.id), d.title, lambda *_: None))
            out.append(d)
        return out

    def with_passages(self, docs: Sequence[DocumentInfo]) -> list[DocumentInfo]:
        """``docs`` with passages cut and embedded by the current embedder, made now where missing or stale.

        Documents stored before passages existed get them on the first question
        that uses them: one pass of the small embedder over the stored text.
        """
        out = []
        for d in docs:
            if d.passage_embedder != self.embedder.name:
                with self._passage_lock:
                    d = self.store.get_document(d.id)
                    if d.passage_embedder != self.embedder.name:
                        log.info("cutting %s into passages for %s (first use)", d.title, self.embedder.name)
                        pages = None
                        if self.pages_of is not None:
                            try:
                                pages = self.pages_of(d)
                            except Exception:  # the original is unreadable: estimate page breaks
                                log.warning("pages of %s unreadable; estimating page breaks", d.title)
                        passages = self.passages_of(self.store.segments(d.id), pages)
                        d = self.store.set_passages(d.id, self.embedder.name, passages,
                                                    self.embed_passages(passages, d.title, lambda *_: None))
            out.append(d)
        return out

    def records(self, doc: DocumentInfo) -> list[PassageRecord]:
        """A document's passages (cached per document version)."""
        key = (doc.id, doc.sha256, doc.passage_embedder)
        with self._lock:
            if key in self._records:
                self._records.move_to_end(key)
                return self._records[key]
        recs = self.store.passages(doc.id)
        with self._lock:
            self._records[key] = recs
            while len(self._records) > 64:
                self._records.popitem(last=False)
        return recs

    # -- ranking ------------------------------------------------------------
    def rank(self, docs: Sequence[DocumentInfo], question: str, mode: str = "hybrid", depth: int = DEPTH
             ) -> Ranking:
        """Passages of ``docs`` for ``question``, best first: by vectors, full text or both fused.

        A question that asks two things (``retrieval.decompose``) is also searched part
        by part; a passage keeps its best score of the whole question and the parts, so
        each part's best passages rank with the whole question's (``self.decompose``).
        """
        if mode not in MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}; use one of {', '.join(MODES)}")
        docs = self.with_passages(docs)
        queries = [question] + (question_parts(question) if self.decompose else [])
        texts = self._search_texts([d.id for d in docs], queries, depth) if mode in ("hybrid", "lexical") else None
        try:
            vectors = self.embedder.encode(queries) if mode in ("hybrid", "vector") else [None] * len(queries)
            records = {d.id: self.records(d) for d in docs}
        finally:
            lexical = texts.result() if texts is not None else [[] for _ in queries]
        best: dict[tuple[int, int], Retrieved] = {}
        for query, vector, lex in zip(queries, vectors, lexical):  # the whole question first: it wins ties
            for h in self._rank_one(docs, records, lex, vector, mode, depth):
                key = (h.document_id, h.passage)
                if key not in best or h.score > best[key].score:
                    best[key] = h
        hits = list(best.values())
        if len(queries) > 1:
            hits.sort(key=lambda h: -h.score)  # stable: equal scores keep the whole question's order
        return Ranking(hits, records)

    def _search_texts(self, ids: list[int], queries: list[str], depth: int):
        """A future of each query's full-text hits (``Store.search_text``): searched in a thread of their own
        while the question is embedded where the database is a server, which does the work elsewhere; at once
        with SQLite, whose search runs in this process and, beside the embedding's two torch threads on two
        cores, slowed it more than it saved (the question's ranking 22.1 -> 19.8 ms in pairs,
        docs/COMPRESSION.md "Twenty-third run")."""
        def search() -> list:
            return [self.store.search_text(ids, q, depth) for q in queries]

        if self.store.engine.dialect.name != "sqlite":
            return self._fulltext.submit(search)
        done: Future = Future()
        done.set_result(search())
        return done

    def _rank_one(self, docs: Sequence[DocumentInfo], records: dict[int, list[PassageRecord]], lex: list,
                  vector, mode: str, depth: int) -> list[Retrieved]:
        """One query's passages, best first (``vector``: the query's embedding, unless mode is lexical;
        ``lex``: its full-text hits)."""
        vec = self._torch(self.passage_vectors.search, vector, docs, depth) if mode in ("hybrid", "vector") else []
        vscore = {(h.document_id, h.index): h.score for h in vec}
        lscore = {(h.document_id, h.index): h.score for h in lex}
        if mode == "hybrid":
            fused = rrf([list(vscore), list(lscore)], k=self.rrf_k, weights=self.fusion_weights)
        else:
            fused = vscore if mode == "vector" else lscore
        titles = {d.id: d.title for d in docs}
        hits = []
        lowest = float("-inf")  # ties (one first, one second place each way) go to the closer meaning
        order = sorted(fused.items(), key=lambda x: (-x[1], -vscore.get(x[0], lowest), -lscore.get(x[0], lowest), x[0]))
        for (doc_id, pi), sc in order:
            p = records[doc_id][pi]
            hits.append(Retrieved(doc_id, titles[doc_id], p.segment, p.text, p.page, p.page, sc, p.index,
                                  p.start, p.end, vscore.get((doc_id, pi)), lscore.get((doc_id, pi))))
        return hits

    def scores(self, docs: Sequence[DocumentInfo], question: str, k: int | None = None,
               mode: str = "hybrid") -> dict[int, dict[int, float]]:
        """Score of each ranked segment of ``docs`` for ``question``: {document id: {segment index: score}}.

        A segment's score is its best passage's fused score; ``k``: only the best k segments.
        """
        out = self.rank(docs, question, mode).segment_scores([d.id for d in docs])
        if k is not None:
            keep = sorted(((sc, d, j) for d, m in out.items() for j, sc in m.items()), reverse=True)[:k]
            out = {d.id: {} for d in docs}
            for sc, d, j in keep:
                out[d][j] = sc
        return out

    def segment_scores(self, docs: Sequence[DocumentInfo], question: str, k: int | None = None
                       ) -> dict[int, dict[int, float]]:
        """The old way, kept for comparison: cosine of the question to each whole-segment vector."""
        docs = self.embedded(docs)
        n = self.store.count_segments([d.id for d in docs])
        hits = self._torch(self.vectors.search, self.embedder.encode_one(question), docs, k or n)
        out: dict[int, dict[int, float]] = {d.id: {} for d in docs}
        for h in hits:
            out[h.document_id][h.index] = h.score
        return out

    def retrieve(self, docs: Sequence[DocumentInfo], query: str, k: int = 4, mode: str = "hybrid"
                 ) -> list[Retrieved]:
        """The ``k`` passages of ``docs`` best matching ``query``, best first (no language model needed)."""
        return self.rank(docs, query, mode).hits[:k]
