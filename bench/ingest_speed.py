#!/usr/bin/env python
"""Ingestion of a generated book through the real service, split into extraction / segmentation /
compression / storage, and the store's size on disk per document token (raw text, 8x, 32x memories).

    .venv/bin/python bench/ingest_speed.py [--pages 300] [--model qwen] [--ratios 8 32]

The PDF is made on the spot (fpdf2) from seeded pseudo-English prose, so the
run needs nothing from outside. Each ratio ingests the same PDF into a fresh
data dir. Writes bench/results/ingest_speed_<model>.json.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import MODELS_DIR, RESULTS_DIR, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--ratios", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    from bench.books import make_book
    from tome import Config, Tome
    from uio.model import load_model

    lm = load_model(a.model, MODELS_DIR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pdf = make_book(Path(tmp) / "book.pdf", a.pages)
        for ratio in a.ratios:
            tome = Tome(Config(data_dir=Path(tmp) / f"data{ratio}", model=a.model, ratio=ratio,
                               models_dir=MODELS_DIR), lm=lm)
            t0 = time.perf_counter()
            r = tome.ingest(pdf)
            total = time.perf_counter() - t0
            assert r.ok, r.error
            doc = r.document
            text_bytes = sum(len(s.text.encode()) for s in tome.store.segments(doc.id))
            mem_bytes = tome.store.memory_sets(doc.id)[0].bytes
            rows.append({"ratio": ratio, "pages": doc.pages, "tokens": doc.tokens, "total_s": total,
                         **{k: round(v, 3) for k, v in r.timings.items()},
                         "text_bytes_per_token": text_bytes / doc.tokens,
                         "memory_bytes_per_token": mem_bytes / doc.tokens,
                         "raw_kv_bytes_per_token": lm.kv_bytes_per_token,
                         "compress_tok_s": doc.tokens / r.timings["compress_s"]})
            tome.store.close()
    print(f"\n{lm.name} on {lm.device} ({str(lm.dtype).removeprefix('torch.')}), {rows[0]['pages']} pages, "
          f"{rows[0]['tokens']:,} tokens\n")
    print("| ratio | extract s | segment s | compress s | store s | total s | compress tok/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ratio']}x | {r['extract_s']:.1f} | {r['segment_s']:.1f} | {r['compress_s']:.1f} | "
              f"{r['store_s']:.2f} | {r['total_s']:.1f} | {r['compress_tok_s']:.0f} |")
    print("\n| stored per document token | bytes |")
    print("|---|---|")
    print(f"| raw text (UTF-8) | {rows[0]['text_bytes_per_token']:.1f} |")
    print(f"| raw KV cache, if it were kept | {rows[0]['raw_kv_bytes_per_token']:,} |")
    for r in rows:
        print(f"| {r['ratio']}x memories (file) | {r['memory_bytes_per_token']:,.1f} |")
    out = a.out or RESULTS_DIR / f"ingest_speed_{a.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, rows)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
