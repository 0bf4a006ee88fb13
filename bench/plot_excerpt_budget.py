"""Answers and first token against the memory slots read beside compressed mode's passage, as one plot.

    .venv/bin/python bench/plot_excerpt_budget.py --out docs/compression_excerpt_budget.png

Reads the eleventh run's cells (``bench/eval_compress.py`` ``/x1bM``, ``/x1`` and ``/x1nomem`` cells of
``bench/results/eval_compress_qwen_{realdocs,planted}_budget{,2}.json``); each point is a cell: its share of
questions right and its median first token, at the median slots its answers read (docs/COMPRESSION.md,
"Eleventh run").
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ONE_PASSAGE = re.compile(r"kvzip-fast@8/x1(b\d+|nomem)?")  # the 8x cells with one passage
TAGS = ("budget", "budget2")


def points(part: str) -> list[tuple[float, float, float]]:
    """(median slots read, share right, median first token in s) of every one-passage 8x cell, by slots."""
    out = {}
    for tag in TAGS:  # 24-token answers only (budget48 and budget64 are other scales)
        path = RESULTS / f"eval_compress_qwen_{part}_{tag}.json"
        if not path.exists():
            continue
        for key, cell in json.loads(path.read_text())["cells"].items():
            method = key.split("|")[-1]
            if not ONE_PASSAGE.fullmatch(method):
                continue
            rows = cell["rows"]
            slots = statistics.median(r["prefix_len"] or 0 for r in rows)
            out[method] = (slots, sum(r["correct"] for r in rows) / len(rows),
                           statistics.median(r["ttft_s"] for r in rows))
    return sorted(out.values())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/compression_excerpt_budget.png"))
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (right, first) = plt.subplots(1, 2, figsize=(10, 4))
    for name, part in (("real manuals (40 q)", "realdocs"), ("planted facts (42 q)", "planted")):
        pts = points(part)
        right.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        if name.startswith("real"):
            first.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=name)
            retrieval = json.loads((RESULTS / "eval_compress_qwen_realdocs_budget.json").read_text())["cells"]
            rows = next(c["rows"] for k, c in retrieval.items() if k.endswith("|retrieval"))
            share = sum(r["correct"] for r in rows) / len(rows)
            right.axhline(share, ls="--", c="grey", label="retrieval, real manuals")
            right.axhline(share + 0.10, ls=":", c="grey", label="target: retrieval + 10 points")
            first.axhline(statistics.median(r["ttft_s"] for r in rows) / 10, ls=":", c="grey",
                          label="target: 1/10 of retrieval's")
    right.axvline(256, c="k", lw=0.5)
    first.axvline(256, c="k", lw=0.5)
    right.set(xlabel="memory slots read beside the passage (median)", ylabel="answers right",
              title="Qwen, kvzip-fast 8x + the best passage")
    first.set(xlabel="memory slots read beside the passage (median)", ylabel="first token, s (median)",
              title="first token (real manuals; the 0 and 128 points from a second run)")
    right.legend(fontsize=7)
    first.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
