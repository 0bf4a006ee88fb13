"""What a second thread that has run torch work costs a prefill (GNU OpenMP's spin throttling).

torch's CPU kernels use OpenMP (libgomp). Every OS thread that runs a parallel region gets its own team of
worker threads, and the teams live as long as their threads. Once libgomp manages more threads than the
process may use CPUs, it stops letting idle workers spin between parallel regions (its "throttled" spin count),
so each region waits for its workers to wake. Tome ran torch in several threads (the question's embedding and
memory assembly in the caller's thread, generation in a ``tome-generate`` thread, compression in
``tome-compress``), so on a 2-core machine with 2 intra-op threads every prefill paid that wake-up on each of its
few hundred parallel regions, a short prefill (compressed mode's ~300 tokens) proportionally most. Since
``uio/torch_thread.py`` a question's torch work runs on one thread; this script keeps measuring the cause.

Each scenario runs in its own process (teams cannot be undone inside one), the same forward as the product's
prefill: ``--prompt`` tokens after ``--past`` cached positions, and a long uncompressed-style prompt:

- ``one``: everything in the main thread, the only team;
- ``two``: the main thread first runs one forward (its team stays), then the timed forwards run in a second
  thread, as a question's generation does in Tome.

    .venv/bin/python bench/omp_teams.py --model qwen --threads 1,2    # -> bench/results/omp_teams_<model>.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time

from bench.common import RESULTS_DIR, load_model, table, write_json


def forward_s(model, n: int, past: int, reps: int) -> float:
    """Median seconds of a forward over ``n`` new tokens after ``past`` cached ones (last logits only)."""
    import torch
    from transformers import DynamicCache

    times = []
    for _ in range(reps):
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            if past:
                model(input_ids=torch.randint(100, 20000, (1, past)), past_key_values=cache, use_cache=True,
                      logits_to_keep=1)
            pos = torch.arange(past, past + n)[None]
            ids = torch.randint(100, 20000, (1, n))
            t = time.perf_counter()
            model(input_ids=ids, past_key_values=cache, position_ids=pos, cache_position=pos[0], use_cache=True,
                  logits_to_keep=1)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def scenario(model_name: str, threads: int, which: str, shapes: list[tuple[int, int]], reps: int) -> dict:
    """One process's measurements: {"<n>+<past>": seconds}."""
    model = load_model(model_name, threads=threads).model
    if which == "two":
        forward_s(model, 64, 0, 1)  # the main thread's team now exists, as after a question's embedding
    out: dict = {}

    def measure() -> None:
        for n, past in shapes:
            out[f"{n}+{past}"] = forward_s(model, n, past, reps)

    if which == "one":
        measure()
    else:
        worker = threading.Thread(target=measure, name="second")
        worker.start()
        worker.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts, comma-separated")
    ap.add_argument("--prompt", type=int, default=300, help="compressed mode's prompt tokens (passage + question)")
    ap.add_argument("--past", type=int, default=256, help="memory slots before it")
    ap.add_argument("--long", type=int, default=3200, help="retrieval's prompt tokens")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # "<threads>:<scenario>": run one scenario, print JSON
    args = ap.parse_args()
    shapes = [(args.prompt, args.past), (args.long, 0)]
    if args.child:
        threads, which = args.child.split(":")
        print("RESULT " + json.dumps(scenario(args.model, int(threads), which, shapes, args.reps)), flush=True)
        return
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for which in ("one", "two"):
            cmd = [sys.executable, __file__, "--model", args.model, "--prompt", str(args.prompt), "--past",
                   str(args.past), "--long", str(args.long), "--reps", str(args.reps), "--child", f"{threads}:{which}"]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res = json.loads(next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))[7:])
            short, long_ = res[f"{args.prompt}+{args.past}"], res[f"{args.long}+0"]
            rows.append({"threads": threads, "teams": which, "short_s": round(short, 3), "long_s": round(long_, 3),
                         "short/long": round(short / long_, 3)})
            print(rows[-1], flush=True)
    print(table(rows))
    write_json(RESULTS_DIR / f"omp_teams_{args.model}.json",
               {"model": args.model, "prompt": args.prompt, "past": args.past, "long": args.long, "rows": rows})


if __name__ == "__main__":
    main()
