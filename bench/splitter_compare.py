#!/usr/bin/env python
"""Tome's splitter (ingest/segments.py) against LangChain's RecursiveCharacterTextSplitter, on a generated book.

    .venv/bin/python bench/splitter_compare.py [--pages 40] [--max-tokens 1024]

Both cut the same extracted pages (pages joined as ingest/segments.py joins
them) into pieces of at most ``--max-tokens`` SmolLM2 tokens. LangChain's is
``RecursiveCharacterTextSplitter.from_huggingface_tokenizer`` with paragraph,
line, sentence and word separators and no overlap (Tome's segments never
overlap: each is compressed once). Measured: segment count, tokens per segment
(counted by tokenising each segment alone, as an encoder would read it), how
many exceed the cap, page-span correctness (the span a segment claims holds its
first and last words), where segments end (paragraph / sentence / mid-sentence)
and time. Writes bench/results/splitter_compare.json.
"""
from __future__ import annotations

import argparse
import bisect
import random
import re
import tempfile
import time
from pathlib import Path

from bench.common import MODELS_DIR, RESULTS_DIR, write_json  # noqa: E402

from bench.books import prose  # noqa: E402  (same seeded pseudo-English)

_SENTENCE_END = re.compile(r"[.!?;:][\"')\]]?$")


def make_book(path: Path, pages: int) -> Path:
    """Pages of 3-5 paragraphs of prose, separated by blank lines (so paragraph cuts exist)."""
    from fpdf import FPDF

    rng = random.Random(1)
    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    for _ in range(pages):
        pdf.add_page()
        pdf.multi_cell(0, 5, "\n\n".join(prose(rng, rng.randint(60, 140)) for _ in range(rng.randint(3, 5))))
    pdf.output(str(path))
    return path


def langchain_segments(pages, tokenizer, max_tokens: int):
    """(text, page_start, page_end) from LangChain's splitter; pages found from each chunk's start index."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from ingest.segments import PAGE_SEPARATOR

    texts = [p.text for p in pages if p.text]
    numbers = [p.number for p in pages if p.text]
    starts, pos = [], 0
    for t in texts:
        starts.append(pos)
        pos += len(t) + len(PAGE_SEPARATOR)
    full = PAGE_SEPARATOR.join(texts)
    splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        tokenizer, chunk_size=max_tokens, chunk_overlap=0, separators=["\n\n", "\n", ". ", " ", ""],
        add_start_index=True)
    page_of = lambda c: numbers[max(0, bisect.bisect_right(starts, c) - 1)]  # noqa: E731
    out = []
    for d in splitter.create_documents([full]):
        a = d.metadata["start_index"]
        out.append((d.page_content, page_of(a), page_of(a + len(d.page_content) - 1)))
    return out, full


def measure(name: str, segs, pages, full: str, tokenizer, max_tokens: int, seconds: float) -> dict:
    by_number = {p.number: p.text for p in pages}
    n_tok = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t, _, _ in segs]
    span_ok = 0
    for text, a, b in segs:
        words = text.split()
        span = " ".join(by_number[n] for n in range(a, b + 1) if n in by_number)
        span_ok += bool(words) and words[0] in span and words[-1] in span and \
            " ".join(span.split()).find(" ".join(words[:3])) >= 0 and " ".join(span.split()).find(" ".join(words[-3:])) >= 0
    ends = {"paragraph": 0, "sentence": 0, "mid-sentence": 0}
    pos = 0
    for text, _, _ in segs[:-1]:
        at = full.find(text, pos)
        after = full[at + len(text): at + len(text) + 2] if at >= 0 else ""
        pos = at + len(text) if at >= 0 else pos
        if after.startswith("\n\n") or text.endswith("\n\n"):
            ends["paragraph"] += 1
        elif _SENTENCE_END.search(text.rstrip()):
            ends["sentence"] += 1
        else:
            ends["mid-sentence"] += 1
    covered = sum(len("".join(t.split())) for t, _, _ in segs) / max(1, len("".join(full.split())))
    return {"splitter": name, "segments": len(segs), "max_tokens": max(n_tok), "mean_tokens": sum(n_tok) / len(n_tok),
            "over_cap": sum(n > max_tokens for n in n_tok), "page_span_correct": span_ok / len(segs),
            "ends": ends, "text_covered": round(covered, 4), "seconds": round(seconds, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "splitter_compare.json")
    a = ap.parse_args()

    from transformers import AutoTokenizer

    from ingest import read_document, split_segments

    tokenizer = AutoTokenizer.from_pretrained(MODELS_DIR / "smollm2")
    with tempfile.TemporaryDirectory() as tmp:
        pages = read_document(make_book(Path(tmp) / "book.pdf", a.pages)).pages
    t = time.perf_counter()
    ours = split_segments(pages, tokenizer, a.max_tokens)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs, full = langchain_segments(pages, tokenizer, a.max_tokens)
    t_theirs = time.perf_counter() - t
    rows = [measure("tome (ingest/segments.py)", [(s.text, s.page_start, s.page_end) for s in ours], pages, full,
                    tokenizer, a.max_tokens, t_ours),
            measure("langchain RecursiveCharacterTextSplitter", theirs, pages, full, tokenizer, a.max_tokens, t_theirs)]
    result = {"pages": len(pages), "max_tokens": a.max_tokens, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    print("| splitter | segments | max tokens | mean tokens | over cap | page span correct | ends: paragraph / "
          "sentence / mid-sentence | text covered | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e = r["ends"]
        print(f"| {r['splitter']} | {r['segments']} | {r['max_tokens']} | {r['mean_tokens']:.0f} | {r['over_cap']} | "
              f"{r['page_span_correct']:.2f} | {e['paragraph']} / {e['sentence']} / {e['mid-sentence']} | "
              f"{r['text_covered']:.3f} | {r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
