"""Training and held-out KL of distillation runs, from their metrics.jsonl files, as one plot.

    .venv/bin/python bench/plot_training.py runs/distill-smollm2-8x-l256-kvzip-1000/metrics.jsonl \\
        --reference 0.476 --out bench/results/train_distill_smollm2_8x_l256_kvzip_1000.png

``--reference``: a held-out KL to draw as a line (KVzip 8x's, bench/eval_distill.py). ``--metric answer_ce``
plots another logged term (its training value and its ``heldout_`` value) instead of the KL.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


LABELS = {"kl": "KL(teacher || student), nats/token", "answer_ce": "answer cross-entropy, nats/token",
          "autoencode": "auto-encoding KL, nats/token", "attention": "attention-output relative error"}


def read(path: Path, metric: str = "kl") -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, training value) and (step, held-out value) of ``metric``; a resumed run's repeated steps keep the
    last. A step without the term (answer_ce: no QA probe in that batch) is left out."""
    train, held = {}, {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if metric in row:
            train[row["step"]] = row[metric]
        if f"heldout_{metric}" in row:
            held[row["step"]] = row[f"heldout_{metric}"]
    return sorted(train.items()), sorted(held.items())


def smooth(points: list[tuple[int, float]], window: int = 25) -> list[tuple[int, float]]:
    out = []
    for i in range(len(points)):
        part = points[max(0, i - window + 1):i + 1]
        out.append((points[i][0], sum(v for _, v in part) / len(part)))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", type=Path, nargs="+")
    ap.add_argument("--reference", type=float, default=None)
    ap.add_argument("--metric", default="kl", choices=sorted(LABELS))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for path in args.metrics:
        train, held = read(path, args.metric)
        name = path.parent.name
        ax.plot(*zip(*smooth(train)), alpha=0.6, label=f"{name}: training {args.metric} (mean of 25 steps)")
        ax.plot(*zip(*held), marker="o", label=f"{name}: held-out {args.metric}")
    if args.reference is not None:
        ax.axhline(args.reference, color="grey", linestyle="--", label=f"KVzip, no training ({args.reference})")
    ax.set_xlabel("step (256 tokens each)")
    ax.set_ylabel(LABELS[args.metric])
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
