#!/usr/bin/env python
"""Ingestion of a generated book through the real service, split into extraction / segmentation /
compression / storage, and the store's size on disk per document token (raw text, 8x, 32x memories).

    .venv/bin/python bench/ingest_speed.py [--pages 300] [--model qwen] [--ratios 8 32]
    .venv/bin/python bench/ingest_speed.py --stages 10 100 300 [--background 100] [--model qwen]   # issue 19

``--stages``: for each page count, stage 1 (until the book is askable) per phase: extract (pypdf),
segment (model tokenizer), embed (passages cut and embedded), store (rows, full text, ready); the
embedder is loaded before the clock starts (a running server has it), as is the model. ``--background
PAGES``: on that book, stage 2's speed (the default compressor, one segment per call as the worker runs
it, and ``--stage2-also`` (kvzip, kvzip-fast) in the same loop, against the plain forward with logits over
the same segments, interleaved), then the time to the
first token of one question asked on the idle server and while the worker compresses the book in the
background (each asked after a random part of a chunk, so the wait for the model lock is a fair
draw; wall clock, lock wait included). The system load average is recorded next to each figure.
Writes bench/results/ingest_stages_<model>.json.

The PDF is made on the spot (fpdf2) from seeded pseudo-English prose, so the
run needs nothing from outside. Each ratio ingests the same PDF into a fresh
data dir. Writes bench/results/ingest_speed_<model>.json.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import MODELS_DIR, RESULTS_DIR, ROOT, load_model, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--ratios", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--stages", type=int, nargs="+", metavar="PAGES",
                    help="measure the two stages instead: stage 1 for books of these page counts")
    ap.add_argument("--background", type=int, metavar="PAGES",
                    help="--stages: stage 2 speed and first-token delay idle vs during stage 2 on this book")
    ap.add_argument("--questions", type=int, default=5, help="--background: questions timed idle and during stage 2")
    ap.add_argument("--speed-segments", type=int, default=3,
                    help="--background: segments timed through the compressor and the plain forward")
    ap.add_argument("--seed", type=int, default=0, help="--background: seed of the questions' arrival times")
    ap.add_argument("--stage2-also", default="kvzip,kvzip-fast",
                    help="--background: compressors timed beside the default one, in the same loop (comma list)")
    ap.add_argument("--embed-check", type=Path, metavar="DATA_DIR", nargs="?", const=ROOT / ".cache" / "eval_retrieval",
                    help="passage vectors under bf16 autocast vs the float32 ones stored in bench/eval_retrieval.py's "
                         "library (default .cache/eval_retrieval): cosine, and the gold page's rank by vectors")
    a = ap.parse_args()
    if a.embed_check:
        return embed_check(a)
    if a.stages:
        return stages(a)

    from bench.books import make_book
    from tome import Config, Tome

    lm = load_model(a.model)
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


QUESTION = "What does the book say about the harbour keeper and the storm?"


def _load() -> float:
    """The 1-minute load average (other jobs on the host), next to each figure."""
    return round(os.getloadavg()[0], 2)


def _ttft(tome, doc_id: int) -> float:
    """Wall seconds from asking (uncompressed) to the first token: includes waiting for the model lock."""
    t0 = time.perf_counter()
    for u in tome.ask([doc_id], QUESTION, max_new_tokens=2):
        if u.text or u.done:
            return time.perf_counter() - t0
    return time.perf_counter() - t0


def stage1(tome, pdf: Path) -> tuple[dict, object]:
    """Stage 1 of ``pdf`` (the book askable), timed per phase."""
    load = _load()
    cpu = time.process_time()
    r = tome.ingest(pdf, wait=False)  # stage 1 only: the book is askable when this returns
    cpu = time.process_time() - cpu  # all threads: on a host to itself, wall >= cpu / threads
    assert r.ok and r.document.ready, r.error
    doc = r.document
    return {"pages": doc.pages, "tokens": doc.tokens, "segments": r.job.segments_total if r.job else None,
            "passages": len(tome.store.passages(doc.id)), "stage1_s": round(r.seconds, 2),
            "stage1_cpu_s": round(cpu, 2),
            **{k: round(v, 3) for k, v in r.timings.items()}, "load_1min": load}, doc


def stage2_speed(tome, doc, n: int, also: tuple[str, ...] = ()) -> dict:
    """Tokens/s of the default compressor (one segment per call, as the worker) and of the plain forward with
    logits over the same ``n`` segments, interleaved, best of each (one warm-up segment each first); the
    compressors named in ``also`` (e.g. kvzip beside kvzip-fast) are timed in the same loop, on the same
    segments, so their ratios to the plain forward compare within one run."""
    import torch

    lm, models = tome.lm, tome.models
    compressors = [models.compressor()]
    compressors += [models.compressor(name=x) for x in dict.fromkeys(also)
                    if models.compressor_name(x) != compressors[0].name]
    segs = tome.queue._segments(doc)[:n + 1]
    rates: dict[str, list[float]] = {c.name: [] for c in compressors}
    plain = []
    load = _load()
    for k, s in enumerate(segs):
        for c in compressors:
            t = time.perf_counter()
            c.compress(lm, [s.token_ids], [s.index], [(s.token_start, s.token_end)])
            if k:  # the first is the warm-up
                rates[c.name].append(len(s.token_ids) / (time.perf_counter() - t))
        t = time.perf_counter()
        with torch.inference_mode():
            lm.model(input_ids=torch.tensor([s.token_ids], device=lm.device), use_cache=False)
        if k:
            plain.append(len(s.token_ids) / (time.perf_counter() - t))
    first = compressors[0]
    return {"compressor": first.name, "ratio": first.ratio, "segments_timed": len(plain),
            "segment_tokens": [len(s.token_ids) for s in segs[1:]],
            "compress_tok_s": [round(x, 1) for x in rates[first.name]],
            "plain_forward_tok_s": [round(x, 1) for x in plain],
            "compress_vs_plain": round(max(rates[first.name]) / max(plain), 3),
            "compressors": {name: {"tok_s": [round(x, 1) for x in r], "vs_plain": round(max(r) / max(plain), 3)}
                            for name, r in rates.items()},
            "load_1min": [load, _load()]}


def background(tome, doc, questions: int, rng: random.Random) -> dict:
    """First-token delay of one question on the idle server, then while the worker compresses ``doc``."""
    _ttft(tome, doc.id)  # warm-up: passages cached, first decode done
    load_idle = _load()
    idle = [_ttft(tome, doc.id) for _ in range(questions)]
    load_idle = [load_idle, _load()]
    tome.start_worker()
    t0 = time.perf_counter()
    marks = []  # when the worker had 1, then 2 segments done: the second chunk's time, warm and alone
    while len(marks) < 2:
        done = tome.compression([doc.id])[0].job.segments_done
        if done > len(marks):
            marks.append(time.perf_counter())
        time.sleep(0.02)
    chunk_s = marks[1] - marks[0]
    n_chunk = tome.config.background_chunk_segments
    stage2_tok_s = sum(s.token_end - s.token_start for s in tome.store.segments(doc.id)[n_chunk:2 * n_chunk]) / chunk_s
    load_busy = _load()
    busy, delays = [], []
    for _ in range(questions):
        delay = rng.uniform(0, chunk_s)  # where in the worker's chunk the question arrives
        time.sleep(delay)
        if tome.compression([doc.id])[0].job.status != "running":
            break
        delays.append(round(delay, 2))
        busy.append(_ttft(tome, doc.id))
    job = tome.compression([doc.id])[0].job
    load_busy = [load_busy, _load()]
    tome.cancel_compression(doc.id)  # enough: the rest of the book would only take time
    tome.stop_worker()
    med_idle, med_busy = statistics.median(idle), statistics.median(busy) if busy else None
    return {"questions": questions, "question": QUESTION, "ttft_idle_s": [round(x, 3) for x in idle],
            "ttft_stage2_s": [round(x, 3) for x in busy], "arrival_delay_s": delays,
            "ttft_idle_median_s": round(med_idle, 3), "ttft_stage2_median_s": med_busy and round(med_busy, 3),
            "ttft_ratio_median": med_busy and round(med_busy / med_idle, 2),
            "ttft_ratio_worst": busy and round(max(busy) / med_idle, 2),
            "first_chunk_s": round(marks[0] - t0, 2), "chunk_s": round(chunk_s, 2),
            "stage2_worker_tok_s": round(stage2_tok_s, 1),
            "chunk_segments": tome.config.background_chunk_segments,
            "segments_done_meanwhile": job.segments_done, "segments_total": job.segments_total,
            "load_1min_idle": load_idle, "load_1min_stage2": load_busy}


def stages(a) -> None:
    import torch

    from bench.books import make_book
    from tome import Config, Tome

    lm = load_model(a.model)
    rows, bg = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for pages in sorted(set(a.stages) | ({a.background} if a.background else set())):
            pdf = make_book(Path(tmp) / f"book{pages}.pdf", pages)
            tome = Tome(Config(data_dir=Path(tmp) / f"data{pages}", model=a.model, models_dir=MODELS_DIR), lm=lm)
            tome.embedder.encode(["warm-up"])  # a running server has its embedder loaded
            row, doc = stage1(tome, pdf)
            if pages in a.stages:
                rows.append(row)
                print(f"stage 1, {pages} pages: {row}", flush=True)
            if pages == a.background:
                speed = stage2_speed(tome, doc, a.speed_segments, tuple(filter(None, a.stage2_also.split(","))))
                print(f"stage 2 speed: {speed}", flush=True)
                bg = {"pages": pages, "tokens": doc.tokens, **speed,
                      **background(tome, doc, a.questions, random.Random(a.seed))}
                print(f"background: {bg}", flush=True)
            tome.store.close()
    print(f"\n{lm.name} on {lm.device} ({str(lm.dtype).removeprefix('torch.')}), {torch.get_num_threads()} threads, "
          f"embedder bf16 autocast: {tome.embedder.bf16}\n")
    print("| pages | tokens | passages | extract s | segment s | embed s | store s | stage 1 s (askable) | CPU s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pages']} | {r['tokens']:,} | {r['passages']:,} | {r['extract_s']:.1f} | {r['segment_s']:.1f} "
              f"| {r.get('embed_s', 0):.1f} | {r['store_s']:.2f} | {r['stage1_s']:.1f} | {r['stage1_cpu_s']:.1f} "
              f"| {r['load_1min']} |")
    if bg:
        print(f"\nstage 2 ({bg['compressor']} {bg['ratio']}x, one segment per call): "
              f"{max(bg['compress_tok_s']):.0f} tok/s vs plain forward with logits {max(bg['plain_forward_tok_s']):.0f} "
              f"tok/s ({bg['compress_vs_plain']:.2f}x); the worker: {bg['stage2_worker_tok_s']:.0f} tok/s "
              f"({bg['chunk_s']:.1f} s per chunk of {bg['chunk_segments']} segment(s))")
        for name, c in bg["compressors"].items():
            print(f"  {name} {bg['ratio']}x: {max(c['tok_s']):.0f} tok/s, {c['vs_plain']:.2f}x the plain forward with logits")
        print(f"first token, median of {len(bg['ttft_idle_s'])}: idle {bg['ttft_idle_median_s']:.2f} s, during stage 2 "
              f"{bg['ttft_stage2_median_s']:.2f} s ({bg['ttft_ratio_median']:.2f}x; worst {bg['ttft_ratio_worst']:.2f}x)")
    write_json(a.out or RESULTS_DIR / f"ingest_stages_{a.model}.json",
               {"model": lm.name, "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch."),
                "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "embedder_bf16": tome.embedder.bf16,
                "stage1": rows, "background": bg})



def embed_check(a) -> None:
    """bf16-autocast passage and question vectors against the float32 ones the library stored (made before
    autocast): cosine per passage, and the gold page's first rank by vector search, single-book questions."""
    import numpy as np

    from bench.qa import realdocs
    from retrieval.embed import from_bytes, load_embedder
    from storage import Store

    data = realdocs.load()
    store = Store(f"sqlite:///{a.embed_check / 'tome.sqlite'}")
    by_file = {d.filename: d for d in store.list_documents()}
    docs = {d["id"]: by_file[Path(d["path"]).name] for d in data["documents"]}
    fp32, bf16 = load_embedder(bf16=False), load_embedder(bf16=True)
    recs, old, new = {}, {}, {}
    t = time.perf_counter()
    for key, d in docs.items():
        recs[key] = store.passages(d.id)
        old[key] = np.stack([from_bytes(b) for b in store.passage_embeddings(d.id)])
        new[key] = bf16.encode([p.text for p in recs[key]])
    bf16_s = time.perf_counter() - t
    cos = np.concatenate([(old[k] * new[k]).sum(1) for k in docs])
    ranks = {"float32": [], "bf16": []}
    for q in data["questions"]:
        if q["kind"] != "single":
            continue
        key, gold = q["docs"][0], q["gold"][0]["page"]
        for name, emb, mat in (("float32", fp32, old[key]), ("bf16", bf16, new[key])):
            order = np.argsort(-(mat @ emb.encode_one(q["question"])), kind="stable")
            pages = list(dict.fromkeys(recs[key][i].page for i in order))  # cited pages, best first
            ranks[name].append(pages.index(gold) if gold in pages else None)
    at = {name: {f"r@{k}": round(sum(r is not None and r < k for r in rs) / len(rs), 3) for k in (1, 3, 5, 10)}
          for name, rs in ranks.items()}
    out = {"passages": int(cos.size), "cosine_min": round(float(cos.min()), 5), "cosine_mean": round(float(cos.mean()), 6),
           "bf16_embed_s": round(bf16_s, 1), "load_1min": _load(), "questions": len(ranks["bf16"]),
           "same_rank": sum(x == y for x, y in zip(ranks["float32"], ranks["bf16"])), "recall_by_vectors": at}
    print(out)
    write_json(a.out or RESULTS_DIR / "ingest_embed_bf16.json", out)


if __name__ == "__main__":
    main()
