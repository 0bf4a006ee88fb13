#!/usr/bin/env python
"""What earlier work in the process does to compressed mode's prefill: one line per run, appended to a JSON file.

    .venv/bin/python bench/prefill_probe.py --label plain
    .venv/bin/python bench/prefill_probe.py --hole 90 --label hole90      # 90 MB filled and freed in this thread
    .venv/bin/python bench/prefill_probe.py --hole 1 --label hole1        # 1 MB: the same slowdown
    .venv/bin/python bench/prefill_probe.py --hole 90 --hole-thread torch --label hole90-torch   # none
    .venv/bin/python bench/prefill_probe.py --retrieval-once --label retrieval-once   # one retrieval question first
    .venv/bin/python bench/prefill_probe.py --interleave --label glibc    # a retrieval question before each
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 \\
        .venv/bin/python bench/prefill_probe.py --interleave --label jemalloc
    # -> bench/results/prefill_probe_<model>.json (one entry per run)

Compressed mode's questions (the real-manual library of ``bench/eval_compress.py``) asked one after the other, after
``--hole`` MB of float32 filled and freed once before the first, in the calling thread or on Tome's torch thread
(``--hole-thread``), or with a retrieval question before each (``--interleave``). Written to tell a heap-layout
effect from a threading one: a fill of any size in the calling thread gives that thread a GNU OpenMP team, after
which every prefill is ~30 % slower (``uio/torch_thread.py``), while the same fill on the torch thread costs nothing.
The figures: median prefill and first token, minor page faults per question. Compare runs made back to back only.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

from bench.common import RESULTS_DIR, result_text
from bench.eval_compress import ask, make_tome, realdocs_items, realdocs_library
from bench.ttft_pair import D11


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ev_pg"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--hole", type=int, default=0, help="MB filled and freed before the first question")
    ap.add_argument("--hole-thread", choices=["main", "torch"], default="main",
                    help="the thread that allocates, fills and frees the hole (torch: tome-torch, uio/torch_thread.py)")
    ap.add_argument("--interleave", action="store_true", help="a retrieval question before each compressed one")
    ap.add_argument("--retrieval-once", action="store_true", help="one retrieval question before the first")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    import torch

    tome = make_tome(args.model, args.work / args.model / "realdocs", args.threads)
    qset, by_id = realdocs_library(tome, "1,2,3,4", D11.split(","))
    items = realdocs_items(qset, by_id)[:args.questions]
    if args.hole:
        from uio.torch_thread import run_on_torch

        def hole() -> None:
            torch.empty(args.hole << 18).fill_(1.0)  # float32: 2**18 of them a MB; freed at once

        run_on_torch(hole) if args.hole_thread == "torch" else hole()
    if args.retrieval_once:
        ask(tome, *items[0][:2], "retrieval", 1)
    modes = ["retrieval", "kvzip-fast@8/x1"] if args.interleave else ["kvzip-fast@8/x1"]
    out: dict[str, list] = {m: [] for m in modes}
    faults = 0
    for i, (docs, question, _) in enumerate(items):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for m in modes:
            r = ask(tome, docs, question, m, 1)
            if i >= 3:  # the first three warm up
                out[m].append((r["timing"]["prefill"], r["ttft_s"]))
        if i >= 3:
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    n = len(items) - 3
    row = {"label": args.label, "at": time.strftime("%Y-%m-%d %H:%M:%S"), "hole_mb": args.hole,
           "hole_thread": args.hole_thread, "interleave": args.interleave, "retrieval_once": args.retrieval_once,
           "questions": n, "minor_faults_per_question": round(faults / n)}
    for m, xs in out.items():
        row[m] = {"prefill_ms": round(1000 * statistics.median(x[0] for x in xs), 1),
                  "ttft_ms": round(1000 * statistics.median(x[1] for x in xs), 1)}
    if args.interleave:
        row["ttft_ratio"] = round(row["kvzip-fast@8/x1"]["ttft_ms"] / row["retrieval"]["ttft_ms"], 4)
    print(json.dumps(row))
    path = RESULTS_DIR / f"prefill_probe_{args.model}.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    path.write_text(result_text(runs + [row]))


if __name__ == "__main__":
    main()
