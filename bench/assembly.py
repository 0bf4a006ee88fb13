#!/usr/bin/env python
"""Cache assembly for a question: the answer path's ``build_cache`` against the generic, differentiable
``cache_from`` (what assembly did before issue 10: join, rotate all layers via the model's
apply_rotary_pos_emb, then ``DynamicCache.update``, which copies once more).

    .venv/bin/python bench/assembly.py --threads 1 [--slots 4800] [--model smollm2]

Random memories of ``--slots`` slots (4,800 = a 300-page book at 32x), best of 5,
per dtype. Writes bench/results/assembly_<model>.json.
"""
from __future__ import annotations

import argparse
import time

from bench.common import MODELS_DIR, RESULTS_DIR, write_json  # noqa: E402


def best_of(fn, n: int = 5) -> float:
    out = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--slots", type=int, default=4800)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    a = ap.parse_args()

    import torch

    from uio.decoder import build_cache, cache_from
    from uio.memory import Memory
    from uio.model import load_model
    from uio.runtime import set_threads

    set_threads(a.threads)
    rows = []
    for dt in a.dtypes:
        lm = load_model(a.model, MODELS_DIR, "cpu", dt)
        cfg = lm.model.config
        shape = (cfg.num_hidden_layers, a.slots, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads)
        g = torch.Generator().manual_seed(0)
        mem = Memory(torch.randn(shape, generator=g).to(lm.dtype), torch.randn(shape, generator=g).to(lm.dtype),
                     [0], [a.slots])
        with torch.inference_mode():
            generic = best_of(lambda: cache_from(lm, mem.keys[:, None], mem.values[:, None]))
            fast = best_of(lambda: build_cache(lm, [mem]))
            ref, new = cache_from(lm, mem.keys[:, None], mem.values[:, None]), build_cache(lm, [mem])[0]
        err = max(float((x.keys.float() - y.keys.float()).abs().max() / x.keys.float().abs().max())
                  for x, y in zip(ref.layers, new.layers))
        rows.append({"dtype": dt, "slots": a.slots, "generic_s": generic, "build_cache_s": fast,
                     "speedup": generic / fast, "max_rel_key_diff": err})
    print(f"\n{lm.name}, {a.slots:,} slots, {torch.get_num_threads()} thread(s), best of 5\n")
    print("| dtype | generic (join + rotate + update) ms | build_cache ms | speed-up | max rel. key diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['generic_s'] * 1000:.1f} | {r['build_cache_s'] * 1000:.1f} | {r['speedup']:.1f}x | "
              f"{r['max_rel_key_diff']:.1e} |")
    out = RESULTS_DIR / f"assembly_{a.model}.json"
    write_json(out, rows)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
