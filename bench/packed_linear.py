"""What packing the Linear weights for oneDNN (uio/packed.py) buys: prefills and decoding, plain vs packed.

In one process, alternating plain and packed rounds (the host's speed drifts): compressed mode's prefill
(``--prompt`` tokens after ``--past`` memory slots), retrieval's (``--long`` tokens), and one decoding step
after ``--past + --prompt`` positions; then single matrix products (the MLP's up projection) in bf16 and float32,
plain ``F.linear`` against the packed product, the reason only bf16 models are packed.

    .venv/bin/python bench/packed_linear.py --model qwen --threads 2   # -> bench/results/packed_linear_<model>.json
"""
from __future__ import annotations

import argparse
import statistics
import time

from bench.common import RESULTS_DIR, load_model, table, write_json
from bench.omp_teams import forward_s
from bench.uio_speed import decode_tok_s


def decode_s(lm, past: int, steps: int = 8) -> float:
    """Mean seconds of one decoding step after ``past`` cached positions."""
    import torch
    from transformers import DynamicCache

    def prefilled():
        cache = DynamicCache(config=lm.model.config)
        with torch.inference_mode():
            lm.model(input_ids=torch.randint(100, 20000, (1, past)), past_key_values=cache, use_cache=True,
                     logits_to_keep=1)
        return cache, past

    return 1 / decode_tok_s(lm, prefilled, steps)


def matmul_rows(rows_list: list[int], reps: int = 20) -> list[dict]:
    """ms of one (rows x 896) @ (896 x 4864) product, plain and packed, in bf16 and float32."""
    import torch

    from uio.packed import BATCH_HINT

    def ms(f) -> float:
        f()
        t = time.perf_counter()
        for _ in range(reps):
            f()
        return (time.perf_counter() - t) / reps * 1000

    out = []
    for dtype in (torch.bfloat16, torch.float32):
        w = torch.randn(4864, 896, dtype=dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, BATCH_HINT)
        for rows in rows_list:
            x = torch.randn(rows, 896, dtype=dtype)
            plain = ms(lambda: torch.nn.functional.linear(x, w))
            fast = ms(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""))
            out.append({"dtype": str(dtype).replace("torch.", ""), "rows": rows, "plain_ms": round(plain, 3),
                        "packed_ms": round(fast, 3), "plain/packed": round(plain / fast, 2)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=300, help="compressed mode's prompt tokens")
    ap.add_argument("--past", type=int, default=256, help="memory slots before it")
    ap.add_argument("--long", type=int, default=3200, help="retrieval's prompt tokens")
    ap.add_argument("--rounds", type=int, default=2, help="plain/packed rounds, alternating")
    args = ap.parse_args()

    from uio.packed import pack_linears, packable, unpack_linears

    lm = load_model(args.model, threads=args.threads)
    if not packable(lm.model):
        raise SystemExit(f"{lm.name} runs in {lm.dtype} here: only bf16 CPU models are packed")
    shapes = {"short_s": lambda: forward_s(lm.model, args.prompt, args.past, 5),
              "long_s": lambda: forward_s(lm.model, args.long, 0, 3),
              "decode_s": lambda: decode_s(lm, args.past + args.prompt)}
    runs: dict[str, dict[str, list[float]]] = {"plain": {k: [] for k in shapes}, "packed": {k: [] for k in shapes}}
    for r in range(args.rounds):
        for kind in ("plain", "packed"):
            (pack_linears if kind == "packed" else unpack_linears)(lm.model)
            for name, f in shapes.items():
                runs[kind][name].append(f())
            print(r, kind, {k: round(v[-1], 4) for k, v in runs[kind].items()}, flush=True)
    rows = []
    for kind, got in runs.items():
        row = {"weights": kind, **{k: round(statistics.median(v), 4) for k, v in got.items()}}
        row["short/long"] = round(row["short_s"] / row["long_s"], 3)
        row["decode_tok_s"] = round(1 / row["decode_s"], 1)
        rows.append(row)
    print(table(rows))
    mm = matmul_rows([1, args.prompt, args.long])
    print(table(mm))
    write_json(RESULTS_DIR / f"packed_linear_{args.model}.json",
               {"model": args.model, "threads": args.threads, "prompt": args.prompt, "past": args.past,
                "long": args.long, "rounds": args.rounds, "rows": rows, "matmul": mm})


if __name__ == "__main__":
    main()
