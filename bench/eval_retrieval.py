"""Retrieval on real manuals: does the gold page come first? Today's segment vectors vs passages, full text, hybrid.

    python bench/eval_retrieval.py                 # build/reuse the library, recall table, latency
    python bench/eval_retrieval.py --answers qwen  # + answer accuracy (slow: run with nohup, TOME_THREADS=1)

The library: the Debian manuals of bench/qa/realdocs.json that the chosen batches' questions use (batches 1
and 2: 7 manuals, 994 pages; batch 3 adds two LilyPond manuals), ingested
through ``Tome.ingest`` with ``Config(compress=False)`` (so segments, segment
vectors, passages and their vectors are made the product's way), plus one
byte-altered copy of R-data for the latency library (1,035 pages). It is kept
under --data (default .cache/eval_retrieval, git-ignored) and reused when present.

Measured, per question (over the question's own books, as a user picks them):

- recall@k of the gold page: the gold page is among the first k *cited pages*.
  For today's segment vectors a cited unit is a whole segment (1,024 Qwen
  tokens, ~3 pages: its page range counts), for the passage methods a page
  (passages of one page merged), so the segment rows get ~3 pages per slot;
- context: the gold page (two-book: both gold pages) is inside the segments
  ``retrieval.select.select_segments`` puts in a 3,072-token context (the
  answer path's rule and default budget), segments ranked the way each row says,
  under each rule of ``CONTEXTS``: neighbours (each way, at the edge, none), one
  global ranking or each book its share, page units instead of segments, and
  compressed mode (8x memories, 128 slots a segment, within 2,080 slots);
- latency: time to rank one question over the whole 1,035-page library, warm.

``--answers`` then asks every question through ``Tome.ask`` (uncompressed,
greedy, --max-new tokens) once per --variants entry, grading with
bench.qa.realdocs.grade; partial results are written after every question:

- ``hybrid``: the shipped answer path; ``global``: its selection with one global
  ranking (before each book had its share); ``today``: whole-segment vectors;
  ``hybrid-nolabels``: no page labels in the prompt; ``vector`` / ``lexical``: the shipped path ranked by
  passage vectors alone / by the database's full text alone;
- ``-n0`` suffix: no neighbours (``TOME_NEIGHBOURS=0``); ``-abstain`` suffix:
  ``ABSTAIN_PROMPT`` instead of retrieval.prompt's PAGED_PROMPT (a prompt
  measured here before it is changed there);
- ``pages``: the context in page units (a segment's part on one page, scored by
  its best passage), each book its share, no neighbours;
- ``ceiling``: the gold page(s) alone as the context;
- ``-bestlast`` suffix: the chosen passages ordered by score, the best next to the question;
  ``-focus`` suffix: the best-matching passage (<= 200 word pieces) repeated after them, labelled;
  ``-budgetN`` suffix: ``context_budget`` N tokens (a book) instead of the configured one;
  ``-noreread`` suffix: no second read over the best page after an answer that restates the question
  (``Config.reread``; ``today`` never has it, ``ceiling`` has no ranking to re-read from).

A variant whose prompt (instruction and passages) is one an earlier variant of
the same question already asked takes that answer (greedy decoding), marked
``same_as``; ``--reuse FILE --reuse-map NEW=OLD`` takes rows of an earlier run
(marked ``reused``) while still building their prompts for that comparison.

    TOME_THREADS=1 nohup python bench/eval_retrieval.py --answers --model qwen --max-new 32 --first two-book \
        --variants global,ceiling,hybrid,hybrid-n0,pages,hybrid-abstain --out bench/results/eval_retrieval_share.json \
        --reuse bench/results/eval_retrieval_answers_qwen.json --reuse-map global=hybrid,ceiling=ceiling &
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench.common import RESULTS_DIR, ROOT, result_text
from bench.qa import realdocs

OUT = RESULTS_DIR / "eval_retrieval.json"
KS = (1, 3, 5, 10)


def build(data_dir: Path, model: str, copy: bool = True, only: set[str] | None = None):
    """A Tome over the manuals (ingested once, uncompressed), and {set doc id: DocumentInfo}.

    ``only``: the ids of the manuals to ingest (default all). Full-text ranking weighs words over every stored
    passage, so a batch's figures are reproduced in a library of the manuals its questions use, not of every
    manual the set has gained since (batch 3 added two)."""
    from tome import Config, Tome

    data = realdocs.load()
    if only is not None:
        data["documents"] = [d for d in data["documents"] if d["id"] in only]
    realdocs.ensure_packages(data)
    cfg = Config(data_dir=data_dir, model=model, compress=False, models_dir=ROOT / ".cache" / "models")
    tome = Tome(cfg)
    docs = {}
    for d in data["documents"]:
        t = time.perf_counter()
        r = tome.ingest(d["path"])
        if not r.ok:
            raise RuntimeError(r.error)
        docs[d["id"]] = r.document
        if not r.duplicate:
            print(f"ingested {d['id']}: {r.document.pages} pages in {time.perf_counter() - t:.0f} s {r.timings}",
                  flush=True)
    if copy:  # a 1,035-page library for latency: one more (byte-altered, so not a duplicate) manual
        src = Path(next(d["path"] for d in data["documents"] if d["id"] == "r-data"))
        dup = data_dir / "R-data-copy.pdf"
        if not dup.exists():
            shutil.copyfile(src, dup)
            with open(dup, "ab") as f:
                f.write(b"\n% copy for the latency library\n")
        r = tome.ingest(dup)
        if not r.ok:
            raise RuntimeError(r.error)
        docs["r-data-copy"] = r.document
    return tome, docs


class Mirror:
    """The library copied into another database (PostgreSQL): same segments, passages and vectors."""

    def __init__(self, tome, docs: dict, url: str):
        from retrieval.retriever import Retriever
        from storage import Store

        self.store = Store(url)
        self.retriever = Retriever(self.store, tome.config.embedder)
        self.docs = {}
        for key, d in docs.items():
            have = self.store.find_by_sha(d.sha256)
            if have is None or have.passage_embedder != d.passage_embedder:
                if have is not None:
                    self.store.delete_document(have.id)
                segs = tome.store.segments(d.id)
                have = self.store.add_document(sha256=d.sha256, title=d.title, filename=d.filename, kind=d.kind,
                                               pages=d.pages, segments=segs, extractor=d.extractor,
                                               embeddings=tome.store.embeddings(d.id), embedder=d.embedder)
                have = self.store.set_passages(have.id, d.passage_embedder, tome.store.passages(d.id),
                                               tome.store.passage_embeddings(d.id))
            self.docs[key] = have


def ranked_units(tome, docs, question, method):
    """(units best first: (doc id, first page, last page), segment scores {doc id: {segment: score}})."""
    r = tome.retriever
    if method == "segments":
        scores = r.segment_scores(docs, question)
        segs = {d.id: tome.store.segments(d.id) for d in docs}
        order = sorted(((sc, d, j) for d, m in scores.items() for j, sc in m.items()), key=lambda x: -x[0])
        return [(d, segs[d][j].page_start, segs[d][j].page_end) for _, d, j in order], scores, None
    if method.startswith("rrf:"):  # rrf:K:WV:WL, e.g. rrf:10:1:2
        _, k, wv, wl = method.split(":")
        old = (r.fusion_weights, r.rrf_k)
        r.fusion_weights, r.rrf_k = (float(wv), float(wl)), int(k)
        try:
            ranking = r.rank(docs, question, "hybrid")
        finally:
            r.fusion_weights, r.rrf_k = old
        return _pages(ranking), ranking.segment_scores([d.id for d in docs]), ranking
    if method == "hybrid-whole":  # without searching a two-part question's parts
        r.decompose = False
        try:
            ranking = r.rank(docs, question, "hybrid")
        finally:
            r.decompose = True
        return _pages(ranking), ranking.segment_scores([d.id for d in docs]), ranking
    mode = {"vector": "vector", "lexical": "lexical", "hybrid": "hybrid"}[method]
    ranking = r.rank(docs, question, mode)  # the product's fusion (retrieval.retriever.FUSION_*)
    return _pages(ranking), ranking.segment_scores([d.id for d in docs]), ranking


def _pages(ranking):
    """Cited pages best first: (doc id, page, page), passages of one page merged."""
    units, seen = [], set()
    for h in ranking.hits:
        if (h.document_id, h.page_start) not in seen:
            seen.add((h.document_id, h.page_start))
            units.append((h.document_id, h.page_start, h.page_start))
    return units


def in_context(tome, docs, scores, golds, budget=3072, neighbours=1, every_book=False, ranking=None,
               per_book=True, pages=False, slots=0, books=1) -> bool:
    """Whether every gold (doc id, page) is inside what ``select_segments`` chooses (``pages``: page units;
    ``slots``: compressed mode, a segment's size its memory slots, at most ``slots``; ``books``: the budget
    is per book, up to this many books' worth, as ``Config.context_books``)."""
    from retrieval.select import select_segments

    budget *= max(1, min(len(docs), books))

    if pages:
        books, unit_scores, reach, owner = page_books(tome, docs, ranking, neighbours)
        sel = select_segments(books, unit_scores, budget, neighbours, every_book, reach, per_book=per_book)
    else:
        books = [(d.title, tome.store.segments(d.id)) for d in docs]
        if slots:
            from tome.answer import _SlotSegment as SlotSeg  # a segment seen through its memory slots
            from uio.memory import slots_for

            books = [(t, [SlotSeg(s.text, s.page_start, s.page_end, s.index, slots_for(s.n_tokens, slots))
                          for s in segs]) for t, segs in books]
        reach = None
        if ranking is not None:  # neighbours only where the best passage touches its segment's edge
            reach = [ranking.reach(d.id, [s.text for s in segs], neighbours) for d, (_, segs) in zip(docs, books)]
        sel = select_segments(books, [scores.get(d.id, {}) for d in docs], budget, neighbours, every_book, reach,
                              per_book=per_book)
        owner = {id(s): d.id for d, (_, segs) in zip(docs, books) for s in segs}
    spans = [(owner[id(p.segment)], p.segment.page_start, p.segment.page_end) for p in sel.passages]
    return all(any(d == g_doc and a <= g_page <= b for d, a, b in spans) for g_doc, g_page in golds)


def page_books(tome, docs, ranking, neighbours=0, edge=0.2):
    """Each book cut into page units (a segment's part on one page), their scores, reach and owners.

    A unit's score is its best passage's; its size, the segment's tokens in proportion to
    its characters. The experiment "pages": the context holds pages, not 1,024-token segments.
    """
    books, scores, reach, owner = [], [], [], {}
    for d in docs:
        units, sc, rc = [], {}, {}
        for seg in tome.store.segments(d.id):
            br = ranking.page_breaks(d.id, seg.index) or ((0, seg.page_start),)
            bounds = [b for b, _ in br[1:]] + [len(seg.text)]
            start = 0
            for (_, page), end in zip(br, bounds):
                text = seg.text[start:end].strip()
                if text:
                    u = PageUnit(text, page, page, len(units), max(1, round(seg.n_tokens * (end - start)
                                                                                / max(1, len(seg.text)))),
                                 seg.index, start, end)
                    units.append(u)
                    owner[id(u)] = d.id
                start = end
        by_page = {}
        for k, u in enumerate(units):
            by_page.setdefault((u.segment, u.page_start), k)
        for h in ranking.hits:
            if h.document_id != d.id:
                continue
            k = by_page.get((h.index, h.page_start))
            if k is None or k in sc:
                continue
            sc[k] = h.score
            u = units[k]
            n = u.end - u.start
            rc[k] = (neighbours if h.start - u.start < edge * n else 0, neighbours if u.end - h.end < edge * n else 0)
        books.append((d.title, units))
        scores.append(sc)
        reach.append(rc)
    return books, scores, reach, owner


def _page_unit(cls):
    from dataclasses import dataclass

    return dataclass(frozen=True)(cls)


@_page_unit
class PageUnit:
    text: str
    page_start: int
    page_end: int
    index: int
    n: int
    segment: int = 0
    start: int = 0
    end: int = 0

    @property
    def n_tokens(self):
        return self.n


# context rules measured: key -> in_context arguments ("ranking": True = neighbours by the best passage's place)
CONTEXTS = {
    "context": dict(per_book=False),  # the first rule: a neighbour each way, one global ranking
    "context_n0": dict(per_book=False, neighbours=0),
    "context_edge": dict(per_book=False, ranking=True),  # shipped before the per-book share
    "context_share": dict(ranking=True),  # shipped: neighbours at the edge, each book its share
    "context_share_n0": dict(ranking=True, neighbours=0),
    "context_share_all": dict(),  # each book its share, a neighbour each way
    "context_share_n0_books": dict(ranking=True, neighbours=0, books=2),  # shipped: 3,072 a book, up to two books
    "context_pages": dict(ranking=True, pages=True, neighbours=0),  # page units, no neighbours
    "context_pages_2048": dict(ranking=True, pages=True, neighbours=0, budget=2048),
    "context_pages_1536": dict(ranking=True, pages=True, neighbours=0, budget=1536),
    "context_pages_edge": dict(ranking=True, pages=True),
    # compressed mode: 8x memories (128 slots a segment) within Qwen's CPU cap of 2,080 slots (Answerer.memory_budget)
    "context_mem_global": dict(per_book=False, ranking=True, slots=128, budget=2080),
    "context_mem_share": dict(ranking=True, slots=128, budget=2080),
    "context_mem_share_n0": dict(ranking=True, slots=128, budget=2080, neighbours=0),
}
CONTEXT_NAMES = {"context": "neighbour each way, global", "context_n0": "no neighbours, global",
                 "context_edge": "edge neighbours, global", "context_share": "edge neighbours, per book",
                 "context_share_n0": "no neighbours, per book", "context_share_all": "neighbour each way, per book",
                 "context_share_n0_books": "no neighbours, per book, 3072 a book",
                 "context_pages": "pages 3072, per book", "context_pages_2048": "pages 2048, per book",
                 "context_pages_1536": "pages 1536, per book", "context_pages_edge": "pages+edge 3072, per book",
                 "context_mem_global": "compressed 8x, edge, global", "context_mem_share": "compressed 8x, edge, per book",
                 "context_mem_share_n0": "compressed 8x, no neighbours, per book"}

METHODS = ("segments", "vector", "lexical", "hybrid", "hybrid-whole", "rrf:60:1:1", "rrf:60:1:2", "rrf:60:1:4", "rrf:10:1:2",
           "rrf:5:1:2", "rrf:1:1:2", "rrf:2:1:1", "rrf:2:1:3")
LABELS = {"segments": "today: segment vectors", "vector": "passage vectors", "lexical": "full text (FTS5 BM25)",
          "hybrid": "hybrid (shipped: RRF k=2, 1:2, two-part questions also by part)",
          "hybrid-whole": "hybrid, the question only whole"}  # rrf:K:WV:WL = RRF k, vector weight, full-text weight


def recall(tome, docs, data, methods=METHODS) -> dict:
    out = {}
    for m in methods:
        rows = []
        for q in data["questions"]:
            qdocs = [docs[i] for i in q["docs"]]
            golds = [(docs[g["doc"]].id, g["page"]) for g in q["gold"]]
            units, scores, ranking = ranked_units(tome, qdocs, q["question"], m)
            first = [next((k for k, (d, a, b) in enumerate(units) if d == gd and a <= gp <= b), None)
                     for gd, gp in golds]
            ctx = {}
            for key, kw in CONTEXTS.items():
                if kw.get("ranking") is None or ranking is not None:
                    kw = dict(kw, ranking=ranking if kw.get("ranking") else None)
                    ctx[key] = in_context(tome, qdocs, scores, golds, **kw)
                else:
                    ctx[key] = False
            rows.append({"id": q["id"], "kind": q["kind"], "style": q["style"], "ranks": first} | ctx)
        out[m] = rows
    return out


def summarise(rows) -> dict:
    single = [r for r in rows if r["kind"] == "single"]
    two = [r for r in rows if r["kind"] == "two-book"]

    def at(rs, k):
        return round(sum(r["ranks"][0] is not None and r["ranks"][0] < k for r in rs) / max(1, len(rs)), 3)

    s = {f"r@{k}": at(single, k) for k in KS}
    for style in ("exact-term", "paraphrase"):
        sub = [r for r in single if r["style"] == style]
        s[f"r@3 {style}"] = at(sub, 3)
    for key in CONTEXTS:
        name = key[len("context"):].replace("_", " ")
        s["context single" + name] = round(sum(r[key] for r in single) / max(1, len(single)), 3)
        s["context two-book" + name] = round(sum(r[key] for r in two) / max(1, len(two)), 3)
    s["n_single"], s["n_two"] = len(single), len(two)
    return s


def latency(tome, docs, data, repeats: int = 1) -> dict:
    """Seconds to rank one question over the whole library (warm): today's vs the hybrid's, and parts."""
    r = tome.retriever
    lib = list(docs.values())
    qs = [q["question"] for q in data["questions"]]
    r.segment_scores(lib, qs[0])  # warm: matrices and passage records cached, like a running app
    r.rank(lib, qs[0])
    t_old, t_new, t_emb, t_vec, t_txt = [], [], [], [], []
    for _ in range(repeats):
        for q in qs:
            t = time.perf_counter()
            r.segment_scores(lib, q)
            t_old.append(time.perf_counter() - t)
            t = time.perf_counter()
            r.rank(lib, q)
            t_new.append(time.perf_counter() - t)
            t = time.perf_counter()
            v = r.embedder.encode_one(q)
            t_emb.append(time.perf_counter() - t)
            t = time.perf_counter()
            r.passage_vectors.search(v, lib, 200)
            t_vec.append(time.perf_counter() - t)
            t = time.perf_counter()
            tome.store.search_text([d.id for d in lib], q, 200)
            t_txt.append(time.perf_counter() - t)

    def ms(xs):
        xs = sorted(xs)
        return {"median_ms": round(1000 * statistics.median(xs), 1), "p95_ms": round(1000 * xs[int(0.95 * (len(xs) - 1))], 1)}

    from retrieval.decompose import parts

    split = [t for t, q in zip(t_new, qs * repeats) if parts(q)]  # searched whole and part by part
    return {"pages": sum(d.pages for d in lib), "segments": tome.store.count_segments([d.id for d in lib]),
            "passages": tome.store.count_passages([d.id for d in lib]), "questions": len(t_new),
            "today_segment_vectors": ms(t_old), "hybrid": ms(t_new),
            "hybrid_two_part_questions": ms(split) | {"n": len(split)} if split else None,
            "added_median_ms": round(1000 * (statistics.median(t_new) - statistics.median(t_old)), 1),
            "parts": {"embed_question": ms(t_emb), "passage_vector_search": ms(t_vec), "full_text": ms(t_txt)}}


# -- answers ---------------------------------------------------------------------------

def answers(tome, docs, data, out_path: Path, max_new: int, variants, limit: int | None = None,
            reuse: dict | None = None, first: str | None = None) -> dict:
    """Answer accuracy through Tome.ask per retrieval variant; writes partial results after each question.

    ``reuse``: {variant: its rows from an earlier run}, taken instead of asked (greedy decoding of the same
    prompt gives the same answer); their prompts are still built, so a later variant with the same prompt
    takes the same answer. ``first``: a question kind asked first (e.g. "two-book").
    """
    from retrieval.prompt import Passage, Selection
    from retrieval.retriever import Ranking, Retrieved
    from dataclasses import replace

    import tome.answer as answer_module
    from tome.answer import Context

    answerer = tome.answerer
    real_choose = answerer.choose
    retriever = tome.retriever
    real_rank = retriever.rank

    def today_rank(qdocs, question, mode="hybrid", depth=200):
        scores = retriever.segment_scores(qdocs, question)
        segs = {d.id: tome.store.segments(d.id) for d in qdocs}
        hits = [Retrieved(d, "", j, segs[d][j].text, segs[d][j].page_start, segs[d][j].page_end, sc)
                for d, m in scores.items() for j, sc in m.items()]
        return Ranking(sorted(hits, key=lambda h: -h.score))  # no passages: segment ranges, no page labels

    def unlabelled_rank(qdocs, question, mode="hybrid", depth=200):
        ranking = real_rank(qdocs, question, mode, depth)
        return Ranking(ranking.hits)  # same choice and citations, but the prompt gets no page labels

    def vector_rank(qdocs, question, mode="hybrid", depth=200):
        return real_rank(qdocs, question, "vector", depth)  # passage vectors alone (still part by part)

    def lexical_rank(qdocs, question, mode="hybrid", depth=200):
        return real_rank(qdocs, question, "lexical", depth)  # the database's full text alone

    from retrieval.narrow import PageText as PageSeg  # one page (or passage) as a prompt segment

    import retrieval.prompt as prompt
    from retrieval import select as select_module

    neighbours, paged_prompt, context_budget = tome.config.neighbours, prompt.PAGED_PROMPT, tome.config.context_budget
    reread = tome.config.reread

    def pages_choose(cdocs, books, question, budget, timer):
        """The context in page units (a segment's part on one page), each book its share, no neighbours."""
        ranking = real_rank(cdocs, question)
        units, scores, reach, owner = page_books(tome, cdocs, ranking, 0)
        sel = select_module.select_segments(units, scores, budget, 0, reach=reach)
        best = {(h.document_id, h.index, h.page_start): h for h in reversed(ranking.hits)}
        ps = [replace(p, match=best.get((owner[id(p.segment)], p.segment.segment, p.segment.page_start)),
                      breaks=((0, p.segment.page_start),)) for p in sel.passages]
        return Context(Selection(ps, sel.truncated), owner)

    def global_choose(cdocs, books, question, budget, timer):
        """The rule before the per-book share: one global ranking."""
        real = select_module.select_segments
        answer_module.select_segments = lambda *a, **k: real(*a, **k, per_book=False)
        try:
            return real_choose(cdocs, books, question, budget, timer)
        finally:
            answer_module.select_segments = real

    def bestlast_choose(choose):
        """The chosen passages ordered worst to best: the best one next to the question."""
        def inner(*a):
            ctx = choose(*a)
            order = sorted(ctx.selection.passages, key=lambda p: -1e9 if p.score is None else p.score)
            return replace(ctx, selection=Selection(order, ctx.selection.truncated))
        return inner

    def focus_choose(choose):
        """As chosen, plus the best-matching passage repeated last, labelled: a pointer for a small reader."""
        def inner(*a):
            ctx = choose(*a)
            best = max((p for p in ctx.selection.passages if p.match is not None),
                       key=lambda p: p.score or 0.0, default=None)
            if best is None:
                return ctx
            m = best.match
            seg = PageSeg(m.text, m.page_start, m.page_start, -2, len(tome.lm.tokenizer(m.text)["input_ids"]))
            ctx.owner[id(seg)] = ctx.owner[id(best.segment)]
            extra = Passage(best.title + " (best match)", seg, best.score, breaks=((0, m.page_start),))
            return replace(ctx, selection=Selection(ctx.selection.passages + [extra], ctx.selection.truncated))
        return inner

    results = {v: [] for v in variants}
    path = out_path
    qs = list(data["questions"])
    random.Random(0).shuffle(qs)  # partial results sample every manual and both kinds
    if first:
        qs = [q for q in qs if q["kind"] == first] + [q for q in qs if q["kind"] != first]
    qs = qs[:limit] if limit else qs
    for qi, q in enumerate(qs):
        qdocs = [docs[i] for i in q["docs"]]
        asked: dict = {}  # prompt (instruction, passages) -> the row of the variant that asked it
        for v in variants:
            retriever.rank = {"today": today_rank, "hybrid-nolabels": unlabelled_rank,
                              "vector": vector_rank, "lexical": lexical_rank}.get(v, real_rank)
            tome.config.neighbours = 0 if v.endswith("-n0") else neighbours
            budget_m = re.search(r"-budget(\d+)$", v)
            tome.config.context_budget = int(budget_m.group(1)) if budget_m else context_budget
            # the second read over the best page (retrieval/narrow.py) is the shipped rule's; today's had none
            tome.config.reread = reread and v != "today" and not v.endswith("-noreread")
            prompt.PAGED_PROMPT = ABSTAIN_PROMPT if v.endswith("-abstain") else paged_prompt
            if v.startswith("pages"):
                answerer.choose = pages_choose
            elif v.startswith("global"):
                answerer.choose = global_choose
            elif v == "ceiling":
                def gold_choose(cdocs, books, question, budget, timer, q=q):
                    return realdocs.gold_context(q, docs, tome.lm.tokenizer)
                answerer.choose = gold_choose
            else:
                answerer.choose = real_choose
            if v.endswith("-bestlast") or v.endswith("-focus"):
                answerer.choose = (bestlast_choose if v.endswith("-bestlast") else focus_choose)(answerer.choose)
            t = time.perf_counter()
            choose = answerer.choose

            def recording_choose(*a, choose=choose):
                ctx = choose(*a)
                key = (prompt.PAGED_PROMPT, tome.config.reread,
                       tuple((ctx.owner[id(p.segment)], p.segment.page_start, p.segment.text, p.breaks)
                             for p in ctx.selection.passages))
                if key in asked:  # the same prompt as an earlier variant's: greedy decoding answers the same
                    raise _Same(asked[key])
                seen.append(key)
                if old is not None:  # this variant's answer comes from the earlier run
                    asked[key] = dict(old, variant=v)
                    raise _Same(asked[key])
                return ctx

            old = (reuse or {}).get(v, {}).get(q["id"])
            answerer.choose, seen = recording_choose, []
            try:
                final = list(tome.ask([d.id for d in qdocs], q["question"], max_new_tokens=max_new))[-1]
                row = {"id": q["id"], "kind": q["kind"], "style": q["style"], "answer": final.text,
                       "correct": realdocs.grade(final.text, q), "abstained": abstained(final.text),
                       "seconds": round(time.perf_counter() - t, 1), "context_tokens": final.context_tokens,
                       "sources": [s.label() for s in final.sources[:3]],
                       "confidence": final.stats.get("confidence"), "logprobs": final.stats.get("token_logprobs")}
                if final.stats.get("reread"):
                    row["reread"] = final.stats["reread"]
                asked.update({k: dict(row, variant=v) for k in seen})
            except _Same as same:  # not asked again: the earlier variant's (or run's) answer, marked
                row = {k: x for k, x in same.row.items() if k != "variant"}
                row |= {"reused": True} if same.row["variant"] == v else {"same_as": same.row["variant"]}
            results[v].append(row)
        retriever.rank, answerer.choose = real_rank, real_choose
        tome.config.neighbours, prompt.PAGED_PROMPT = neighbours, paged_prompt
        tome.config.context_budget, tome.config.reread = context_budget, reread
        summary = {v: {"correct": sum(r["correct"] for r in rs), "asked": len(rs),
                       "wrong": sum(not r["correct"] and not r["abstained"] for r in rs),
                       "abstained": sum(r["abstained"] and not r["correct"] for r in rs)} for v, rs in results.items()}
        path.write_text(json.dumps({"model": tome.model_name, "max_new_tokens": max_new, "done": qi + 1,
                                    "of": len(qs), "summary": summary, "rows": results}, indent=1))
        print(f"[{qi + 1}/{len(qs)}] {q['id']}: " + " ".join(
            f"{v}={'Y' if results[v][-1]['correct'] else 'n'}" for v in variants) + f"  {summary}", flush=True)
    return results


class _Same(Exception):
    """A variant's prompt is one an earlier variant of the same question already asked."""

    def __init__(self, row: dict):
        super().__init__(row["variant"])
        self.row = row


# A prompt measured through the "-abstain" variants (retrieval/prompt.py's PAGED_PROMPT swapped for the run):
# a stricter instruction with a fixed sentence to say when the passages do not hold the answer.
ABSTAIN_PROMPT = (
    "You answer questions using only the passages below; each is labelled [book, page]. If a passage "
    "states the answer, give it briefly, in the passage's own words. If no passage states it, do not "
    "guess: reply only \"The passages do not say.\""
)

_ABSTAIN = re.compile(r"\b(do(es)? not|don't|doesn't|cannot|can't|no) (contain|mention|say|provide|include|"
                      r"find|information|answer|specify)|not (mentioned|specified|provided|found|given)", re.I)


def abstained(text: str) -> bool:
    """The answer says the passages do not hold the answer (not counted as a wrong answer)."""
    return bool(_ABSTAIN.search(text or ""))


def report_answers(path: Path) -> None:
    """Accuracy per variant from an --answers file: all, single-book, two-book; wrong = neither right nor
    abstained; "restated": answers marked as restating the question (tome.doubt, shown as no clear answer),
    right and wrong; "confident wrong": wrong, neither abstained nor marked."""
    from tome.doubt import restates_question

    d = json.loads(path.read_text())
    question = {q["id"]: q["question"] for q in realdocs.load()["questions"]}
    print(f"{d['model']}, {d['done']}/{d['of']} questions, max_new_tokens {d['max_new_tokens']}")
    print(f"{'variant':<18}{'correct':>9}{'single':>9}{'two-book':>10}{'wrong':>7}{'abstained':>10}"
          f"{'restated r/w':>13}{'confident wrong':>16}{'s/answer':>9}")
    for v, rs in d["rows"].items():
        single = [r for r in rs if r["kind"] == "single"]
        two = [r for r in rs if r["kind"] == "two-book"]
        marked = [restates_question(r["answer"], question[r["id"]]) for r in rs]
        print(f"{v:<18}{sum(r['correct'] for r in rs):>4}/{len(rs):<4}"
              f"{sum(r['correct'] for r in single):>4}/{len(single):<4}{sum(r['correct'] for r in two):>5}/{len(two):<4}"
              f"{sum(not r['correct'] and not r['abstained'] for r in rs):>7}"
              f"{sum(r['abstained'] and not r['correct'] for r in rs):>10}"
              f"{sum(m and r['correct'] for m, r in zip(marked, rs)):>9}/{sum(m and not r['correct'] for m, r in zip(marked, rs)):<3}"
              f"{sum(not r['correct'] and not r['abstained'] and not m for m, r in zip(marked, rs)):>16}"
              f"{statistics.median(r['seconds'] for r in rs):>9.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "eval_retrieval")
    ap.add_argument("--model", default="qwen", help="the tokenizer of segments (and the answering model)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batches", default="1", help="question batches of realdocs.json (1: the 66 the docs' "
                    "figures used; 1,2 or all: with the 40 added later)")
    ap.add_argument("--pg", default=os.environ.get("TOME_EVAL_PG", ""),
                    help="also rank over a PostgreSQL copy of the library (its full text: BM25 over tsvector)")
    ap.add_argument("--answers", action="store_true", help="also measure answer accuracy (slow)")
    ap.add_argument("--variants", default="today,hybrid,hybrid-nolabels,ceiling")
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="answers: first N questions only")
    ap.add_argument("--report", type=Path, default=None, help="print the accuracy table of an --answers file")
    ap.add_argument("--reuse", type=Path, default=None, help="answers: an earlier --answers file to take rows from")
    ap.add_argument("--reuse-map", default="", help="answers: NEW=OLD,... variants taken from --reuse "
                    "(e.g. global=hybrid,ceiling=ceiling: the earlier run's global-ranking answers and ceiling)")
    ap.add_argument("--first", default=None, help="answers: ask this kind of question first (two-book)")
    ap.add_argument("--fp32-embedder", action="store_true",
                    help="question vectors in float32 even where the CPU has native bf16 (as runs before 7f097c5)")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    if args.report:
        report_answers(args.report)
        return 0
    data = realdocs.load(batches=realdocs.parse_batches(args.batches))
    tome, docs = build(args.data, args.model, only={d for q in data["questions"] for d in q["docs"]})
    if args.fp32_embedder:
        from retrieval.embed import load_embedder

        tome.retriever._embedder = load_embedder(tome.retriever.embedder_name, bf16=False)
    if args.answers:
        out = args.out.with_name(args.out.stem + f"_answers_{args.model}.json")
        reuse = {}
        if args.reuse:
            rows = json.loads(args.reuse.read_text())["rows"]
            for pair in filter(None, args.reuse_map.split(",")):
                new, old = pair.split("=")
                reuse[new] = {r["id"]: r for r in rows[old]}
        answers(tome, docs, data, out, args.max_new, args.variants.split(","), args.limit, reuse, args.first)
        print(f"wrote {out}")
        return 0
    rows = recall(tome, docs, data, args.methods.split(","))
    table = {m: summarise(rs) for m, rs in rows.items()}
    cols = [f"r@{k}" for k in KS] + ["r@3 exact-term", "r@3 paraphrase"]
    print(f"\n{'retrieval':<26}" + "".join(f"{c[-14:]:>15}" for c in cols))
    for m, s in table.items():
        print(f"{LABELS.get(m, m):<26}" + "".join(f"{s[c]:>15.3f}" for c in cols))
    for m, s in table.items():  # context: gold page (two-book: both) inside the selection, per rule
        print(f"\ncontext, {LABELS.get(m, m)}: single / two-book")
        for key, name in CONTEXT_NAMES.items():
            tail = key[len("context"):].replace("_", " ")
            print(f"  {name:<34}{s['context single' + tail]:>7.3f}{s['context two-book' + tail]:>7.3f}")
    n = next(iter(table.values()))
    print(f"({n['n_single']} single-book questions for r@k and context single, {n['n_two']} two-book)")
    result = {"command": "python bench/eval_retrieval.py", "library": {k: v.pages for k, v in docs.items()},
              "recall": table, "labels": LABELS, "rows": rows}
    if args.pg:
        pg = Mirror(tome, docs, args.pg)
        pg_rows = recall(pg, pg.docs, data, ["lexical", "hybrid"])
        result["recall_postgresql"] = {m: summarise(rs) for m, rs in pg_rows.items()}
        result["rows_postgresql"] = pg_rows
        print("\nPostgreSQL (BM25 over the tsv column; rows: full text alone, hybrid)")
        for m, s in result["recall_postgresql"].items():
            print(f"{LABELS.get(m, m):<26}" + "".join(f"{s[c]:>15.3f}" for c in cols))
        t = []
        lib = list(pg.docs.values())
        for q in data["questions"]:
            t0 = time.perf_counter()
            pg.store.search_text([d.id for d in lib], q["question"], 200)
            t.append(time.perf_counter() - t0)
        result["latency_postgresql_full_text_ms"] = round(1000 * statistics.median(t), 1)
        print(f"PostgreSQL full text over {sum(d.pages for d in lib)} pages: median "
              f"{result['latency_postgresql_full_text_ms']} ms")
        pg.store.close()
    if not args.no_latency:
        lat = latency(tome, docs, data)
        print(f"\nlatency over {lat['pages']} pages ({lat['segments']} segments, {lat['passages']} passages), "
              f"{lat['questions']} questions: today {lat['today_segment_vectors']}, hybrid {lat['hybrid']}, "
              f"added {lat['added_median_ms']} ms (median); two-part questions {lat['hybrid_two_part_questions']}; "
              f"parts {lat['parts']}")
        result["latency"] = lat
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(result_text(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
