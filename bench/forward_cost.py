#!/usr/bin/env python
"""What a forward costs against the tokens it reads: the fixed part that a short prefill cannot spread.

    .venv/bin/python bench/forward_cost.py --model qwen --threads 2
    # -> bench/results/forward_cost_<model>_t<threads>.json

The model as the product runs it (Linear weights packed on a bf16 CPU, ``uio/packed.py``). Forwards over n new
tokens after ``--past`` cached positions (compressed mode reads ~300 after ~250 memory slots), and retrieval's
``--long`` tokens with nothing cached; a least-squares line through the short ones gives the fixed cost and the
cost per token. Compressed mode's first token divided by retrieval's cannot fall below
(fixed + per_token x n) / long_s plus what both pay outside the forward.
"""
from __future__ import annotations

import argparse
import statistics

from bench.common import RESULTS_DIR, load_model, table, write_json
from bench.omp_teams import forward_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--past", type=int, default=244, help="cached positions before the short forwards")
    ap.add_argument("--tokens", default="1,9,16,64,147,294,588", help="new tokens of the short forwards")
    ap.add_argument("--long", type=int, default=3200, help="retrieval's prompt, nothing cached")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    from uio.packed import pack_linears

    lm = load_model(args.model, threads=args.threads)
    packed = pack_linears(lm.model)
    forward_s(lm.model, 16, args.past, 2)  # warm-up
    rows = []
    for n in [int(x) for x in args.tokens.split(",")]:
        s = forward_s(lm.model, n, args.past, args.reps)
        rows.append({"tokens": n, "past": args.past, "ms": round(s * 1000, 1), "ms_per_token": round(s * 1000 / n, 2)})
    long_s = forward_s(lm.model, args.long, 0, max(2, args.reps // 2))
    rows.append({"tokens": args.long, "past": 0, "ms": round(long_s * 1000, 1),
                 "ms_per_token": round(long_s * 1000 / args.long, 2)})
    short = [r for r in rows[:-1] if r["tokens"] >= 16]
    slope, intercept = statistics.linear_regression([r["tokens"] for r in short], [r["ms"] for r in short])
    print(table(rows))
    print(f"\nfixed {intercept:.1f} ms + {slope:.3f} ms per token after {args.past} cached positions "
          f"({args.threads} threads, {packed} layers packed); {args.long} tokens: {long_s * 1000:.0f} ms")
    write_json(RESULTS_DIR / f"forward_cost_{args.model}_t{args.threads}.json",
               {"model": lm.name, "dtype": str(lm.dtype), "threads": args.threads, "packed": packed, "rows": rows,
                "fixed_ms": round(intercept, 1), "ms_per_token": round(slope, 3)})


if __name__ == "__main__":
    main()
