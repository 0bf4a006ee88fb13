#!/usr/bin/env python
"""Ingestion time of a generated ~100-page PDF, split into extraction / segmentation / storage.

    .venv/bin/python bench/ingest_speed.py [--pages 100] [--model smollm2]

The PDF is made on the spot (fpdf2) from seeded pseudo-English prose, so the
run needs nothing from outside. Writes bench/results/ingest_speed.json.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("the harbour keeper light tide boat stone wall morning evening storm rope lantern island "
         "north south wind wave gull market village road bridge river field winter summer house "
         "window door letter book chapter reader voice silence night fire water salt bread").split()


def prose(rng: random.Random, words: int) -> str:
    out, sentence = [], []
    for _ in range(words):
        sentence.append(rng.choice(WORDS))
        if len(sentence) >= rng.randint(8, 18):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    return " ".join(out)


def make_book(path: Path, pages: int, words_per_page: int = 380) -> Path:
    from fpdf import FPDF

    rng = random.Random(0)
    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    for _ in range(pages):
        pdf.add_page()
        pdf.multi_cell(0, 5, prose(rng, words_per_page))
    pdf.output(str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=100)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest_speed.json")
    a = ap.parse_args()

    from ingest import read_document, split_segments
    from storage import Store
    from tome import file_sha256
    from uio.model import load_model

    lm = load_model(a.model, ROOT / ".cache" / "models", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        pdf = make_book(Path(tmp) / "book.pdf", a.pages)
        t0 = time.perf_counter()
        extracted = read_document(pdf)
        t1 = time.perf_counter()
        segments = split_segments(extracted.pages, lm.tokenizer, 1024)
        t2 = time.perf_counter()
        store = Store(f"sqlite:///{tmp}/bench.sqlite")
        store.add_document(sha256=file_sha256(pdf), title="bench", filename="book.pdf", kind="pdf",
                           pages=len(extracted.pages), segments=segments)
        t3 = time.perf_counter()
    row = {"pages": len(extracted.pages), "tokens": segments[-1].token_end, "segments": len(segments),
           "extract_s": t1 - t0, "segment_s": t2 - t1, "store_s": t3 - t2, "total_s": t3 - t0,
           "tokenizer": lm.name}
    print("| pages | tokens | segments | extract s | segment s | store s | total s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {row['pages']} | {row['tokens']:,} | {row['segments']} | {row['extract_s']:.2f} | "
          f"{row['segment_s']:.2f} | {row['store_s']:.2f} | {row['total_s']:.2f} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
