#!/usr/bin/env python
"""CPU prefill and decode speed of the embedded models: allocator tuning on/off, bf16 vs fp32.

Each configuration runs in its own process, because the glibc allocator
settings only fully apply from process start. All configurations are
measured in one run of this script, interleaved, so ratios between them are
meaningful even though this host's absolute speed drifts from run to run.

    .venv/bin/python bench/cpu_speed.py [--models smollm2 qwen] [--prompt 1024] [--decode 32]

Prints a table and writes bench/results/cpu_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.common import MODELS_DIR, RESULTS_DIR, write_json  # noqa: E402
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000",
              "MALLOC_TOP_PAD_": "1073741824"}


def child(model: str, dtype: str, prompt: int, decode: int, repeats: int) -> dict:
    import torch

    from uio.model import load_model
    from uio.runtime import tune_allocator

    if os.environ.get("MALLOC_ARENA_MAX"):
        tune_allocator()
    lm = load_model(model, MODELS_DIR, device="cpu", dtype=dtype)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, lm.tokenizer.vocab_size - 100, (1, prompt), generator=g)
    with torch.inference_mode():
        lm.model(ids[:, :64])  # warm-up
        prefill = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = lm.model(ids, use_cache=True, logits_to_keep=1)
            prefill.append(time.perf_counter() - t)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for i in range(decode):
            out = lm.model(nxt, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        dec = time.perf_counter() - t
    best = min(prefill)
    return {"model": lm.name, "dtype": dtype, "prefill_tok_s": prompt / best, "decode_tok_s": decode / dec,
            "prompt_tokens": prompt, "decode_tokens": decode, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "qwen"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "cpu_speed.json")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child, a.prompt, a.decode, a.repeats)))
        return
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    base_env["HF_HUB_OFFLINE"] = "1"
    rows = []
    for model in a.models:
        for dtype in a.dtypes:
            for tuned in (True, False):  # adjacent in time: the pair's ratio is what we report
                env = base_env | (MALLOC_ENV if tuned else {"TOME_TUNE_MALLOC": "0"})
                cmd = [sys.executable, __file__, "--child", model, dtype, "--prompt", str(a.prompt),
                       "--decode", str(a.decode), "--repeats", str(a.repeats)]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                row = json.loads(res.stdout.strip().splitlines()[-1]) | {"malloc_tuned": tuned}
                rows.append(row)
                print(f"{row['model']:<30} {dtype:<9} tuned={tuned!s:<5} prefill {row['prefill_tok_s']:7.1f} tok/s"
                      f"  decode {row['decode_tok_s']:6.1f} tok/s", flush=True)
    print("\n| model | dtype | allocator tuned | prefill tok/s (1K) | decode tok/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['dtype']} | {'yes' if r['malloc_tuned'] else 'no'} | "
              f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} |")
    print("\nratios (tuned / untuned):")
    for i in range(0, len(rows), 2):
        t, u = rows[i], rows[i + 1]
        print(f"  {t['model']} {t['dtype']}: prefill x{t['prefill_tok_s'] / u['prefill_tok_s']:.2f}, "
              f"decode x{t['decode_tok_s'] / u['decode_tok_s']:.2f}")
    from uio.runtime import cpu_has_fast_bf16

    meta = {"cpu": platform.processor() or platform.machine(), "native_bf16": cpu_has_fast_bf16(),
            "cores": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, {"meta": meta, "rows": rows})
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
