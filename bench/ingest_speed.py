#!/usr/bin/env python
"""Ingestion of a generated book through the real service, split into extraction / segmentation /
compression / storage, and the store's size on disk per document token (raw text, 8x, 32x memories).

    .venv/bin/python bench/ingest_speed.py [--pages 300] [--model qwen] [--ratios 8 32]
    .venv/bin/python bench/ingest_speed.py --stages 10 100 [--model smollm2]   # the two stages (issue 19)

``--stages``: for each page count, stage 1 seconds (until the book is askable), stage 2 tokens/s (the
background worker, ``background_chunk_segments`` per model-lock hold), and the first-token delay of an
uncompressed question asked while the worker compresses vs idle (wall clock, lock wait included).
Writes bench/results/ingest_stages_<model>.json.

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
    ap.add_argument("--stages", type=int, nargs="+", metavar="PAGES",
                    help="measure the two stages instead, for books of these page counts")
    ap.add_argument("--questions", type=int, default=3, help="--stages: questions timed idle and during stage 2")
    a = ap.parse_args()
    if a.stages:
        return stages(a)

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


def _ttft(tome, doc_id: int) -> float:
    """Wall seconds from asking (uncompressed) to the first token: includes waiting for the model lock."""
    t0 = time.perf_counter()
    for u in tome.ask([doc_id], "What does the book say about the harbour?", max_new_tokens=4):
        if u.text or u.done:
            return time.perf_counter() - t0
    return time.perf_counter() - t0


def stages(a) -> None:
    from bench.books import make_book
    from tome import Config, Tome
    from uio.model import load_model

    lm = load_model(a.model, MODELS_DIR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pages in a.stages:
            pdf = make_book(Path(tmp) / f"book{pages}.pdf", pages)
            tome = Tome(Config(data_dir=Path(tmp) / f"data{pages}", model=a.model, models_dir=MODELS_DIR), lm=lm)
            r = tome.ingest(pdf, wait=False)  # stage 1 only: the book is askable when this returns
            assert r.ok, r.error
            doc = r.document
            _ttft(tome, doc.id)  # warm-up
            idle = [_ttft(tome, doc.id) for _ in range(a.questions)]
            tome.start_worker()
            while tome.compression([doc.id])[0].job.segments_done < 1:
                time.sleep(0.1)
            busy = [_ttft(tome, doc.id) for _ in range(a.questions)
                    if tome.compression([doc.id])[0].job.status == "running"]
            while tome.compression([doc.id])[0].job.active:
                time.sleep(0.5)
            tome.stop_worker()
            job = tome.compression([doc.id])[0].job
            stage2_s = (job.updated_at - job.started_at).total_seconds()
            chunk_s = stage2_s / max(1, -(-job.segments_total // tome.config.background_chunk_segments))
            rows.append({"pages": doc.pages, "tokens": doc.tokens, "segments": job.segments_total,
                         "stage1_s": round(r.seconds, 2), **{k: round(v, 3) for k, v in r.timings.items()},
                         "stage2_s": round(stage2_s, 1), "stage2_tok_s": round(doc.tokens / stage2_s, 1),
                         "chunk_segments": tome.config.background_chunk_segments, "chunk_s": round(chunk_s, 2),
                         "ttft_idle_s": [round(x, 3) for x in idle], "ttft_stage2_s": [round(x, 3) for x in busy],
                         "job": job.status})
            tome.store.close()
    print(f"\n{lm.name} on {lm.device}, {a.questions} questions idle / during stage 2\n")
    print("| pages | tokens | stage 1 s (askable) | stage 2 s | stage 2 tok/s | s per chunk | first token idle s "
          "| first token during stage 2 s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pages']} | {r['tokens']:,} | {r['stage1_s']:.1f} | {r['stage2_s']:.0f} | {r['stage2_tok_s']:.0f} "
              f"| {r['chunk_s']:.1f} | {min(r['ttft_idle_s']):.2f}-{max(r['ttft_idle_s']):.2f} "
              f"| {min(r['ttft_stage2_s'] or [0]):.2f}-{max(r['ttft_stage2_s'] or [0]):.2f} |")
    write_json(a.out or RESULTS_DIR / f"ingest_stages_{a.model}.json", rows)


if __name__ == "__main__":
    main()
