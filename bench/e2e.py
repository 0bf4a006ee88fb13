#!/usr/bin/env python
"""Time to first token, end to end, for the same question over books of growing size.

    .venv/bin/python bench/e2e.py --pages 1 10 100 300 --threads 1 --repeats 5 --reread-windows 1

Per book size (generated PDFs, one planted fact, ``bench/books.py``):
- compressed: ``Tome.ask(mode="compressed")`` with the memory LRU emptied before
  each question, so the memories come from the store (memory-mapped file, page
  cache warm); its phase split from ``stats["timing"]``;
- compressed, LRU hit: the same question again, memories already in RAM;
- uncompressed: ``Tome.ask(mode="uncompressed")`` with the whole raw text in the
  prompt, only where it fits the model's window;
- re-read: what a long-context chat app does on every question: prefill the
  raw text. Past the window it is read in window-sized chunks; ``--reread-windows``
  chunks are timed and the rest extrapolated linearly (each chunk is the same work).
Plus ingestion speed: the encoder (no logits) against the base model's plain
batched forward with logits, on the same 1,024-token segments of the largest book.

``first_question_s`` in the JSON is each book's first question in the process
(embedder warm-up, the one checksum; with an untrained adapter, which is new in
every process, also making that adapter's memories): not a TTFT figure.
On CUDA the phases are host-side times (kernels run asynchronously, so
assembly shows up in the prefill); the end-to-end TTFT is exact.

Books are ingested once into ``--data-dir`` (a temporary one by default) and
reused by later runs given the same folder. Writes
bench/results/e2e_<model>_<device>.json and docs/e2e_ttft.png.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.common import MODELS_DIR, RESULTS_DIR, ROOT  # noqa: E402

QUESTION = "Who keeps the north light?"
FACT = "The keeper of the north light is a woman called Orla Venn."
PHASES = ("lookup", "read", "select", "assembly", "prefill", "first_decode")


def make_book(path: Path, pages: int, seed: int) -> Path:
    from bench.books import prose, write_pdf

    if path.is_file():  # made by an earlier run into the same --data-dir: the same bytes, so ingested already
        return path
    rng = random.Random(seed)
    texts = [prose(rng, 380) for _ in range(pages)]
    mid = pages // 2
    texts[mid] = texts[mid][: len(texts[mid]) // 2] + " " + FACT + " " + texts[mid][len(texts[mid]) // 2:]
    return write_pdf(path, texts, title=f"Harbour book, {pages} pages")


def median_timing(runs: list[dict]) -> dict:
    keys = {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) or v is None}
    return {k: statistics.median(r.get(k) or 0.0 for r in runs) for k in sorted(keys)}


def ask_timing(tome, doc_id: int, mode: str, max_new: int) -> dict:
    final = list(tome.ask([doc_id], QUESTION, mode=mode, max_new_tokens=max_new))[-1]
    return final.stats["timing"] | {"context_tokens": final.context_tokens, "answer": final.text}


_WINDOW_S: list[float] = []  # seconds per full window, measured once per run (the same work for any book)


def reread_seconds(lm, ids: list[int], question_ids: list[int], windows: int, repeats: int) -> tuple[float, bool]:
    """Prefill of the raw text (+ question); chunked past the window. (seconds, extrapolated?)"""
    import torch

    chunk = lm.window - len(question_ids) - 256
    total = len(ids) + len(question_ids)

    def prefill(tokens: list[int]) -> float:
        x = torch.tensor([tokens], device=lm.device)
        t = time.perf_counter()
        with torch.inference_mode():
            lm.model(input_ids=x, logits_to_keep=1)
        return time.perf_counter() - t

    if len(ids) <= chunk:
        return statistics.median(prefill(ids + question_ids) for _ in range(repeats)), False
    if not _WINDOW_S:
        starts = [round(i * (len(ids) - chunk) / max(1, windows - 1)) for i in range(windows)] if windows > 1 else [0]
        _WINDOW_S.append(statistics.mean(prefill(ids[s:s + chunk] + question_ids) for s in starts))
    return _WINDOW_S[0] * total / (chunk + len(question_ids)), True


def ingest_speed(lm, adapter, token_lists: list[list[int]], batch: int) -> dict:
    """tok/s of the encoder vs the plain batched forward with logits on the same segments (best of 2)."""
    import torch

    from uio.encoder import Encoder

    n_tok = sum(len(t) for t in token_lists)
    enc = Encoder(adapter, batch_size=batch)

    def plain() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(token_lists), batch):
                lm.model(input_ids=torch.tensor(token_lists[s:s + batch], device=lm.device), use_cache=False)
        return time.perf_counter() - t

    def encoder() -> float:
        t = time.perf_counter()
        enc.compress(token_lists)
        return time.perf_counter() - t

    p, e = min(plain(), plain()), min(encoder(), encoder())
    return {"tokens": n_tok, "batch": batch, "plain_with_logits_tok_s": n_tok / p, "encoder_tok_s": n_tok / e,
            "encoder_vs_plain": p / e}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pages = [r["pages"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    series = [("re-read the book (chunked prefill)", "reread_s", "o-", "tab:red"),
              ("uncompressed (raw text in the prompt)", "uncompressed_s", "s-", "tab:orange"),
              ("compressed, memories from the store", "compressed_s", "^-", "tab:blue"),
              ("compressed, memories in the LRU", "compressed_lru_s", "v--", "tab:cyan"),
              ("compressed, best slots only (capped)", "compressed_capped_s", "d:", "tab:green")]
    for label, key, style, color in series:
        pts = [(r["pages"], r[key]) for r in rows if r.get(key)]
        if pts:
            ax.plot(*zip(*pts), style, label=label, color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(pages, [str(p) for p in pages])
    ax.set_xlabel("book length, pages")
    ax.set_ylabel("time to first token, s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, nargs="+", default=[1, 10, 100, 300])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ratio", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reread-windows", type=int, default=1, help="window-sized chunks timed when re-reading")
    ap.add_argument("--max-new", type=int, default=2, help="new tokens per answer (only the first is timed)")
    ap.add_argument("--ingest-segments", type=int, default=8, help="segments timed for ingestion speed (0: skip)")
    ap.add_argument("--ingest-batch", type=int, default=4, help="segments per batch there (GPU: 32 or more)")
    ap.add_argument("--cache-policy", default="full",
                    help="recent-cache policy of the answers (full: none; auto: the Attention-Gate where it ships)")
    ap.add_argument("--capped", type=lambda v: -1 if v == "auto" else int(v), default=0,
                    help="also time compressed answers attending to at most this many slots (best segments "
                         "first); auto: Tome's default memory budget on this device")
    ap.add_argument("--data-dir", type=Path, help="keep the ingested books here (reused by later runs)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "e2e_ttft.png")
    a = ap.parse_args()

    from tome import Config, Tome
    from uio.model import load_model
    from uio.runtime import set_threads, tune_allocator

    tune_allocator()
    set_threads(a.threads)
    import torch

    models = MODELS_DIR
    lm = load_model(a.model, models, a.device, a.dtype)
    tmp = None
    if a.data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        a.data_dir = Path(tmp.name)
    a.data_dir.mkdir(parents=True, exist_ok=True)
    tome = Tome(Config(data_dir=a.data_dir / "data", model=a.model, ratio=a.ratio, models_dir=models,
                       context_budget=lm.window, max_new_tokens=a.max_new, threads=a.threads,
                       cache_policy=a.cache_policy, memory_budget=0), lm=lm)  # 0: every slot
    tok = lm.tokenizer
    q_ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                    tokenize=True, return_dict=True)["input_ids"]
    rows, ingest_rows = [], []
    for n in a.pages:
        pdf = make_book(a.data_dir / f"book{n}.pdf", n, seed=n)
        r = tome.ingest(pdf)
        assert r.ok, r.error
        doc = r.document
        record = a.data_dir / f"ingest_{n}.json"  # the run that ingested a book keeps its figures here
        if not r.duplicate:
            row = {"pages": n, "tokens": doc.tokens, **{k: round(v, 2) for k, v in r.timings.items()},
                   "compress_tok_s": doc.tokens / r.timings["compress_s"], "threads": torch.get_num_threads()}
            record.write_text(json.dumps(row))
            print(f"ingested {n} pages, {doc.tokens:,} tokens: {r.timings}", flush=True)
        if record.is_file():
            ingest_rows.append(json.loads(record.read_text()))
        segs = tome.store.segments(doc.id)
        ids = [t for s in segs for t in tok(s.text, add_special_tokens=False)["input_ids"]]
        book_ids = ids
        first = ask_timing(tome, doc.id, "compressed", a.max_new)  # checksum, embedder warm-up: once per process
        cold, warm = [], []
        for _ in range(a.repeats):
            tome._memories.clear()
            cold.append(ask_timing(tome, doc.id, "compressed", a.max_new))
            warm.append(ask_timing(tome, doc.id, "compressed", a.max_new))
        row = {"pages": n, "tokens": doc.tokens, "segments": len(segs), "slots": cold[0]["context_tokens"],
               "first_question_s": first["ttft_s"], "compressed_s": median_timing(cold)["ttft_s"],
               "compressed_lru_s": median_timing(warm)["ttft_s"],
               "compressed_phases": {k: v for k, v in median_timing(cold).items() if k != "context_tokens"},
               "answer": cold[0]["answer"]}
        if a.capped:
            full_config = tome.config
            tome.config = replace(full_config, memory_budget=a.capped)
            cap = tome.memory_budget()  # auto (-1): what Tome's default allows on this device
            capped = []
            for _ in range(a.repeats):
                tome._memories.clear()
                capped.append(ask_timing(tome, doc.id, "compressed", a.max_new))
            tome.config = full_config
            row["capped_slots"] = capped[0]["context_tokens"]
            row["compressed_capped_s"] = median_timing(capped)["ttft_s"]
            row["capped_phases"] = {k: v for k, v in median_timing(capped).items() if k != "context_tokens"}
        fits = doc.tokens + len(q_ids) + 64 + a.max_new + 64 < lm.window
        if fits:
            plain = [ask_timing(tome, doc.id, "uncompressed", a.max_new) for _ in range(a.repeats)]
            row["uncompressed_s"] = median_timing(plain)["ttft_s"]
            row["uncompressed_phases"] = {k: v for k, v in median_timing(plain).items() if k != "context_tokens"}
        row["reread_s"], row["reread_extrapolated"] = reread_seconds(lm, ids, q_ids, a.reread_windows, a.repeats)
        rows.append(row)
        if a.capped:
            print(f"{n} pages: capped at {row['capped_slots']} slots {row['compressed_capped_s']:.3f} s", flush=True)
        print(f"{n} pages: compressed {row['compressed_s']:.3f} s, LRU {row['compressed_lru_s']:.3f} s, "
              f"uncompressed {row.get('uncompressed_s', float('nan')):.3f} s, re-read {row['reread_s']:.2f} s",
              flush=True)
    speed = None
    if a.ingest_segments:
        # 1,024-token windows of the largest book's text (segments end at sentences, a little short of l)
        full = [book_ids[i * 1024:(i + 1) * 1024] for i in range(min(a.ingest_segments, len(book_ids) // 1024))]
        if len(full) >= 2:
            speed = ingest_speed(lm, tome.adapter, full, batch=a.ingest_batch)
    tome.store.close()

    device = lm.device.type
    dtype = str(lm.dtype).removeprefix("torch.")
    print(f"\n{lm.name} on {device} ({dtype}), {torch.get_num_threads()} thread(s), {a.ratio}x memories, "
          f"median of {a.repeats}\n")
    print("| pages | tokens | memory slots | compressed TTFT s (from store) | compressed, LRU hit | uncompressed | "
          "re-read | re-read / compressed |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        unc = f"{r['uncompressed_s']:.3f}" if "uncompressed_s" in r else "does not fit"
        rr = f"{r['reread_s']:.2f}" + (" (extrap.)" if r["reread_extrapolated"] else "")
        print(f"| {r['pages']} | {r['tokens']:,} | {r['slots']:,} | {r['compressed_s']:.3f} | "
              f"{r['compressed_lru_s']:.3f} | {unc} | {rr} | {r['reread_s'] / r['compressed_s']:,.0f}x |")
    print("\nCompressed TTFT split (median s):\n")
    print("| pages | " + " | ".join(PHASES) + " | other | ttft |")
    print("|---" * (len(PHASES) + 3) + "|")
    for r in rows:
        ph = r["compressed_phases"]
        other = ph["ttft_s"] - sum(ph.get(p, 0.0) for p in PHASES)
        print(f"| {r['pages']} | " + " | ".join(f"{ph.get(p, 0.0):.4f}" for p in PHASES) +
              f" | {other:.4f} | {ph['ttft_s']:.4f} |")
    if a.capped:
        print(f"\nCompressed, at most {cap} slots (best segments first" + (", the default budget)" if a.capped < 0
                                                                           else ")") + ":\n")
        print("| pages | slots | ttft s | " + " | ".join(PHASES) + " |")
        print("|---" * (len(PHASES) + 3) + "|")
        for r in rows:
            ph = r["capped_phases"]
            print(f"| {r['pages']} | {r['capped_slots']:,} | {ph['ttft_s']:.4f} | " +
                  " | ".join(f"{ph.get(p, 0.0):.4f}" for p in PHASES) + " |")
    lo, hi = rows[0], rows[-1]
    summary = {"ttft_ratio_largest_vs_smallest": hi["compressed_s"] / lo["compressed_s"],
               "ttft_ratio_capped": hi["compressed_capped_s"] / lo["compressed_capped_s"] if a.capped else None,
               "reread_vs_compressed": {r["pages"]: r["reread_s"] / r["compressed_s"] for r in rows}}
    print(f"\nTTFT {hi['pages']}p / {lo['pages']}p (compressed, from store): "
          f"{summary['ttft_ratio_largest_vs_smallest']:.2f}x" +
          (f"; capped at {hi['capped_slots']} slots: {summary['ttft_ratio_capped']:.2f}x" if a.capped else ""))
    if ingest_rows:
        print("\n| ingested | tokens | compress s | compress tok/s |\n|---|---|---|---|")
        for r in ingest_rows:
            print(f"| {r['pages']} pages | {r['tokens']:,} | {r['compress_s']:.1f} | {r['compress_tok_s']:.0f} |")
    if speed:
        print(f"\nIngestion, {speed['tokens']:,} tokens in segments of 1,024, batch {speed['batch']}: encoder "
              f"{speed['encoder_tok_s']:.0f} tok/s vs plain forward with logits {speed['plain_with_logits_tok_s']:.0f}"
              f" tok/s = {speed['encoder_vs_plain']:.2f}x")
    out = a.out or RESULTS_DIR / f"e2e_{a.model}_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": lm.name, "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
                               "ratio": a.ratio, "repeats": a.repeats, "reread_windows": a.reread_windows,
                               "capped": cap if a.capped else 0, "cache_policy": a.cache_policy,
                               "question": QUESTION, "rows": rows, "summary": summary, "ingest": ingest_rows,
                               "ingest_speed": speed}, indent=1))
    plot(rows, a.plot, f"{lm.name}, {device} {dtype}, {torch.get_num_threads()} thread(s), {a.ratio}x memories")
    print(f"\nwrote {out} and {a.plot}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
