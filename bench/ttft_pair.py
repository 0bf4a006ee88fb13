#!/usr/bin/env python
"""Compressed mode's first token against retrieval's, the two asked back to back on each question.

    .venv/bin/python bench/ttft_pair.py --model qwen --threads 2 --tag all170
    # -> bench/results/ttft_pair_<model>_<tag>.json and .png

Why not ``bench/eval_compress.py``'s cells: a cell answers every question in one mode before the next cell
starts, so the two modes' first tokens come from moments ten minutes apart, and this host's speed moves
between them (a 261-token prefill 238 ms in one run, 262 ms twenty minutes later, while the 3,200-token one
did not move). Here each question is asked in both modes in turn (which goes first alternates), so each ratio
compares two first tokens measured seconds apart. The answers stop at ``--max-new`` tokens (default 1: the
first token is what is measured; neither mode's prompt depends on the answer length below the model's window).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench.common import RESULTS_DIR, table, write_json
from bench.eval_compress import ask, make_tome, realdocs_items, realdocs_library

D11 = "r-data,r-faq,r-admin,r-intro,bashref,asymptote,gnuplot,lp-usage,lp-extending,amsldoc,fntguide"
HELD_OUT = ("lp-", "amsldoc", "fntguide")  # question ids of the manuals no setting was chosen on


def summary(pairs: list[dict], a: str, b: str) -> dict:
    """Medians of each mode's first token, their ratio, and the median of the per-question ratios."""
    ta, tb = [p[a] for p in pairs], [p[b] for p in pairs]
    ratios = [p[a] / p[b] for p in pairs]
    return {"n": len(pairs), f"{a}_s": round(statistics.median(ta), 4), f"{b}_s": round(statistics.median(tb), 4),
            "ratio_of_medians": round(statistics.median(ta) / statistics.median(tb), 4),
            "median_ratio": round(statistics.median(ratios), 4),
            "share_at_most_0.1": round(sum(r <= 0.1 for r in ratios) / len(ratios), 3)}


def plot(pairs: list[dict], a: str, b: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([p[a] / p[b] for p in pairs], ".", ms=4, label=f"{a} / {b}, each question")
    ax.axhline(0.1, color="k", lw=0.8, ls="--", label="1/10")
    ax.set_xlabel("question, in the order asked")
    ax.set_ylabel("first token, ratio")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--docs", default=D11)
    ap.add_argument("--batches", default="1,2,3,4")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ev_pg"), help="the library (as eval_compress --work)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="kvzip-fast@8/x1,retrieval", help="the two modes, as eval_compress names them")
    ap.add_argument("--max-new", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3, help="questions asked in both modes before measuring")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    a, b = args.methods.split(",")
    tome = make_tome(args.model, args.work / args.model / "realdocs", args.threads)
    qset, by_id = realdocs_library(tome, args.batches, args.docs.split(","))
    items = [(docs, question, q["id"]) for docs, question, q in realdocs_items(qset, by_id)]
    for docs, question, _ in items[:args.warmup]:  # memories read, weights paged in, both modes
        for m in (a, b):
            ask(tome, docs, question, m, args.max_new)
    pairs = []
    for i, (docs, question, qid) in enumerate(items):
        row: dict = {"id": qid, "first": a if i % 2 == 0 else b, "at": time.strftime("%H:%M:%S")}
        for m in (a, b) if i % 2 == 0 else (b, a):
            r = ask(tome, docs, question, m, args.max_new)
            row[m], row[f"{m} prefill"] = r["ttft_s"], r["timing"]["prefill"]
        pairs.append(row)
        print(f"{qid}: {row[a]:.3f} s / {row[b]:.3f} s = {row[a] / row[b]:.3f}", flush=True)
    held = [p for p in pairs if p["id"].startswith(HELD_OUT)]
    half = len(pairs) // 2
    rows = [{"questions": name} | summary(ps, a, b) for name, ps in
            (("all", pairs), ("held out", held), ("first half", pairs[:half]), ("second half", pairs[half:])) if ps]
    print(table(rows))
    stem = f"ttft_pair_{args.model}" + (f"_{args.tag}" if args.tag else "")
    write_json(RESULTS_DIR / f"{stem}.json", {"model": args.model, "threads": args.threads, "methods": [a, b],
                                               "max_new": args.max_new, "summary": rows, "pairs": pairs})
    plot(pairs, a, b, RESULTS_DIR / f"{stem}.png")
    print(f"wrote {RESULTS_DIR / stem}.json and .png")


if __name__ == "__main__":
    main()
