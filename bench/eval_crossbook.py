#!/usr/bin/env python
"""Cross-book questions: answer accuracy, citation precision and selector recall, compressed vs uncompressed.

    .venv/bin/python bench/eval_crossbook.py [--questions 3] [--model smollm2]

The QA set is made here, seeded: ten small books (fpdf2) of pseudo-English
prose, each with one fact planted on one page ("In Birch, the lighthouse
keeper's dog is called Ossian."). Every question asks for two facts from two
different books; the two books are selected together with 0, 3 or 8 other
books (2, 5, 10 selected). For each question and mode:

- accuracy: both planted values appear in the answer (and, per fact, each one);
- citation precision: of the top-2 citations (the question needs two), the
  share whose page range holds one of the two facts;
- recall@k (mode-independent): the share of the two fact segments among the k
  segments the selector ranks highest; "selected" = share that made it into
  the uncompressed context.

Writes bench/results/eval_crossbook.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import MODELS_DIR, RESULTS_DIR, write_json  # noqa: E402

from bench.books import prose as book_prose  # noqa: E402

WORDS = ("the harbour keeper tide boat stone wall morning evening storm rope lantern island north south "
         "wind wave gull market village road field winter summer house window letter chapter reader "
         "voice silence night fire water salt bread cart mill orchard fence meadow barn well").split()
PLACES = ["Alder", "Birch", "Cedar", "Dunmore", "Elmstead", "Fernhill", "Glenrock", "Hollow", "Ivybank", "Juniper"]
# (fact sentence, question part, values): one template per book, rotated; values are unusual words
# so that a hit in the answer is not a coincidence.
FACTS = [
    ("In {p}, the old harbour gate is painted {v}.", "what colour is the harbour gate in {p}",
     ["crimson", "turquoise", "saffron", "violet", "emerald"]),
    ("In {p}, the lighthouse keeper's dog is called {v}.", "what is the lighthouse keeper's dog called in {p}",
     ["Ossian", "Brindle", "Marlowe", "Quill", "Tansy"]),
    ("In {p}, the bakery opens at {v} o'clock every morning.", "at what hour does the bakery open in {p}",
     ["five", "six", "seven", "four", "eight"]),
    ("In {p}, the stone bridge was built by an engineer named {v}.", "who built the stone bridge in {p}",
     ["Thornbury", "Castellan", "Whitlock", "Pemberton", "Ashdown"]),
    ("In {p}, the village well is {v} metres deep.", "how deep is the village well in {p}",
     ["forty", "ninety", "sixty", "thirty", "seventy"]),
]


NUMBERS = {"four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "thirty": "30", "forty": "40",
           "sixty": "60", "seventy": "70", "ninety": "90"}


def mentions(answer: str, value: str) -> bool:
    """The answer gives ``value`` (a number may be written in digits: "90 metres" for "ninety")."""
    import re

    text = answer.lower()
    digits = NUMBERS.get(value.lower())
    return value.lower() in text or bool(digits and re.search(rf"(?<![\d:.]){digits}(?![\d:])", text))


@dataclass
class Fact:
    book: int
    page: int  # 1-based page that holds it
    sentence: str
    question: str
    value: str


def prose(rng: random.Random, words: int) -> str:
    return book_prose(rng, words, WORDS, longest=16)


def make_books(folder: Path, rng: random.Random, pages: int, words: int) -> tuple[list[Path], list[Fact]]:
    from fpdf import FPDF

    paths, facts = [], []
    for b, place in enumerate(PLACES):
        sentence_t, question_t, values = FACTS[b % len(FACTS)]
        f = Fact(b, rng.randint(2, pages), "", "", rng.choice(values))
        f.sentence, f.question = sentence_t.format(p=place, v=f.value), question_t.format(p=place)
        texts = []
        for page in range(1, pages + 1):
            body = prose(rng, words)
            if page == f.page:
                cut = body.find(". ", len(body) // 2) + 2  # somewhere in the middle of the page
                body = body[:cut] + f.sentence + " " + body[cut:]
            texts.append(f"{place} chronicle, page {page}. {body}")
        pdf = FPDF()
        pdf.set_font("Helvetica", size=11)
        pdf.set_title(f"{place} Chronicle")
        for t in texts:
            pdf.add_page()
            pdf.multi_cell(0, 6, t)
        path = folder / f"{place.lower()}.pdf"
        pdf.output(str(path))
        paths.append(path)
        facts.append(f)
    return paths, facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--questions", type=int, default=3, help="questions per number of selected books")
    ap.add_argument("--pages", type=int, default=4)
    ap.add_argument("--words", type=int, default=170, help="words of prose per page")
    ap.add_argument("--segment-len", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "eval_crossbook.json")
    ap.add_argument("--rescore", action="store_true", help="score the answers saved in --out again, no model run")
    args = ap.parse_args()
    if args.rescore:
        result = json.loads(args.out.read_text())
        for r in result["rows"]:
            found = [mentions(r["answer"], v) for v in r["values"]]
            r["both_correct"], r["facts_correct"] = all(found), sum(found) / 2
        return report(result, args.out)

    from tome import Config, Tome

    rng = random.Random(0)
    tmp = Path(tempfile.mkdtemp(prefix="tome-crossbook-"))
    paths, facts = make_books(tmp, rng, args.pages, args.words)
    tome = Tome(Config(data_dir=tmp / "data", model=args.model, models_dir=MODELS_DIR,
                       segment_len=args.segment_len, max_new_tokens=args.max_new_tokens, device="cpu"))
    t0 = time.perf_counter()
    docs = [tome.ingest(p).document for p in paths]
    ingest_s = time.perf_counter() - t0
    segments = {d.id: tome.store.segments(d.id) for d in docs}

    def fact_segment(f: Fact) -> tuple[int, int]:
        d = docs[f.book]
        on_page = [s for s in segments[d.id] if s.page_start <= f.page <= s.page_end]
        hits = [s.index for s in on_page if f.value in s.text] or [s.index for s in on_page]
        return d.id, hits[0]

    rows = []
    for n_books in (2, 5, 10):
        for q in range(args.questions):
            a, b = rng.sample(range(len(docs)), 2)
            others = [i for i in range(len(docs)) if i not in (a, b)]
            chosen = sorted([a, b] + rng.sample(others, n_books - 2))
            fa, fb = facts[a], facts[b]
            question = f"{fa.question[0].upper()}{fa.question[1:]}, and {fb.question}? Answer both."
            ids = [docs[i].id for i in chosen]
            want = {fact_segment(fa), fact_segment(fb)}
            fact_pages = {(docs[f.book].id, f.page) for f in (fa, fb)}
            scores = tome.scores([docs[i] for i in chosen], question)
            ranked = sorted(((sc, d, j) for d, m in scores.items() for j, sc in m.items()), reverse=True)
            recall = {k: len(want & {(d, j) for _, d, j in ranked[:k]}) / 2 for k in (1, 2, 4, 8)}
            for mode in ("uncompressed", "compressed"):
                t = time.perf_counter()
                final = list(tome.ask(ids, question, mode=mode, max_new_tokens=args.max_new_tokens))[-1]
                seconds = time.perf_counter() - t
                found = [mentions(final.text, f.value) for f in (fa, fb)]
                top = final.sources[:2]
                precise = sum(any(d == s.document_id and s.page_start <= p <= s.page_end for d, p in fact_pages)
                              for s in top) / max(1, len(top))
                used = {(s.document_id, s.segment) for s in final.sources}
                rows.append({
                    "books": n_books, "mode": mode, "question": question, "values": [fa.value, fb.value],
                    "answer": final.text, "both_correct": all(found), "facts_correct": sum(found) / 2,
                    "citation_precision@2": precise, "selected_recall": len(want & used) / 2,
                    "recall@k": recall, "context_tokens": final.context_tokens, "truncated": bool(final.truncated),
                    "seconds": round(seconds, 2)})
                print(f"[{n_books} books, {mode}] {question} -> {final.text[:100]!r} "
                      f"({'ok' if all(found) else sum(found)}/2, {seconds:.1f}s)", file=sys.stderr, flush=True)

    result = {"model": tome.model_name, "adapter_trained": tome.adapter_trained, "embedder": tome.embedder.name,
              "segment_len": args.segment_len, "ratio": tome.config.ratio, "pages_per_book": args.pages,
              "tokens_per_book": sum(d.tokens for d in docs) / len(docs), "context_budget": tome.config.context_budget,
              "ingest_s_10_books": round(ingest_s, 1), "rows": rows}
    report(result, args.out)


def report(result: dict, out: Path) -> None:
    """Summarise the rows (per number of books and mode), write the JSON, print the table."""
    rows = result["rows"]
    summary = []
    for n_books in (2, 5, 10):
        for mode in ("uncompressed", "compressed"):
            rs = [r for r in rows if r["books"] == n_books and r["mode"] == mode]
            mean = lambda key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
            summary.append({"books": n_books, "mode": mode, "questions": len(rs), "accuracy": mean("both_correct"),
                            "fact_accuracy": mean("facts_correct"), "citation_precision@2": mean("citation_precision@2"),
                            "selected_recall": mean("selected_recall"),
                            **{f"recall@{k}": sum(r["recall@k"][str(k)] for r in rs) / len(rs) for k in (1, 2, 4, 8)},
                            "context": mean("context_tokens"), "truncated": mean("truncated"),
                            "seconds": mean("seconds")})
    result["summary"] = summary
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"model {result['model']} (adapter trained: {result['adapter_trained']}), embedder {result['embedder']}, "
          f"l={result['segment_len']}, {result['tokens_per_book']:.0f} tokens/book, budget {result['context_budget']}")
    print("| books | mode | accuracy (both) | per fact | citation precision@2 | selected recall "
          "| recall@1 | recall@2 | recall@4 | recall@8 | context (tok/slots) | s/answer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['books']} | {s['mode']} | {s['accuracy']:.2f} | {s['fact_accuracy']:.2f} | "
              f"{s['citation_precision@2']:.2f} | {s['selected_recall']:.2f} | {s['recall@1']:.2f} | "
              f"{s['recall@2']:.2f} | {s['recall@4']:.2f} | {s['recall@8']:.2f} | {s['context']:.0f} | "
              f"{s['seconds']:.1f} |")


if __name__ == "__main__":
    main()
