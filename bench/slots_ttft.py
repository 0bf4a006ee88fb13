#!/usr/bin/env python
"""Time to first token against the number of memory slots a question attends to (synthetic memories).

    .venv/bin/python bench/slots_ttft.py --model qwen --threads 1

Checks the default memory budget's rule (``uio.model.flat_ttft_slots``) on this
machine without ingesting books: random pre-RoPE keys/values of 1 segment's
slots, of the budget, and of bench/e2e.py's 300-page book (150 segments) at the model's ratio
go through the answer path (``build_cache`` + ``stream`` with the full cache, one new token).
Reports assembly + prefill + first token, median of the repeats after a warm-up,
as a ratio to the 1-segment case. Writes bench/results/slots_ttft_<model>_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.common import MODELS_DIR, RESULTS_DIR  # noqa: E402

BOOK_300_SEGMENTS = 150  # the 300-page book of bench/e2e.py (132K tokens; segments end at sentences)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--ratio", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=4)
    a = ap.parse_args()

    from uio.runtime import set_threads, tune_allocator

    tune_allocator()
    set_threads(a.threads)
    import torch

    from uio.decoder import build_cache
    from uio.generate import stream
    from uio.memory import Memory
    from uio.model import flat_ttft_slots, load_model

    lm = load_model(a.model, MODELS_DIR, a.device, "auto")
    c = lm.model.config
    layers, kv = c.num_hidden_layers, c.num_key_value_heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    budget = flat_ttft_slots(lm)
    sizes = {"1 segment": 1024 // a.ratio, "default budget": budget, "300 pages": BOOK_300_SEGMENTS * 1024 // a.ratio}
    messages = [{"role": "user", "content": "Who keeps the north light? Answer from the book."}]
    rows = []
    for label, m in sizes.items():
        mem = Memory(torch.randn(layers, m, kv, hd, dtype=lm.dtype), torch.randn(layers, m, kv, hd, dtype=lm.dtype),
                     [0], [m], [(0, m * a.ratio)], "synthetic", a.ratio)
        times = []
        for _ in range(a.repeats + 1):
            start = time.perf_counter()
            cache, prefix = build_cache(lm, [mem])
            gen = stream(lm, messages, past_key_values=cache, prefix_len=prefix, max_new_tokens=1)
            list(gen)
            times.append(gen.stats.first_token_at - start)
        rows.append({"case": label, "slots": m, "ttft_s": statistics.median(times[1:])})  # first: warm-up
    base = rows[0]["ttft_s"]
    print(f"\n{lm.name}, {lm.device.type} {str(lm.dtype).removeprefix('torch.')}, {torch.get_num_threads()} thread(s), "
          f"{a.ratio}x, prompt {gen.stats.prompt_tokens} tokens, median of {a.repeats}\n")
    print("| memories | slots | assembly + prefill + first token, s | x 1 segment |\n|---|---|---|---|")
    for r in rows:
        r["x_one_segment"] = r["ttft_s"] / base
        print(f"| {r['case']} | {r['slots']:,} | {r['ttft_s']:.3f} | {r['x_one_segment']:.2f}x |")
    out = RESULTS_DIR / f"slots_ttft_{a.model}_{lm.device.type}.json"
    out.write_text(json.dumps({"model": lm.name, "device": lm.device.type, "dtype": str(lm.dtype),
                               "threads": torch.get_num_threads(), "ratio": a.ratio, "budget": budget,
                               "prompt_tokens": gen.stats.prompt_tokens, "rows": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
