"""A prefill's cost with and without the head's densely strided input (``uio.model.restride_head_input``).

One process, the same prompts, the model's forward with ``logits_to_keep=1`` (what every prefill of
``uio.generate`` and HF ``generate`` does), with the pre-hook and with it removed; prints a table and
writes ``bench/results/head_copy_<model>.json``.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/head_copy.py --model qwen
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from uio.model import load_model
    from uio.runtime import set_threads, tune_allocator

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--models-dir", type=Path, default=ROOT / ".cache" / "models")
    ap.add_argument("--lengths", default="81,540")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    tune_allocator()
    set_threads(1)
    lm = load_model(args.model, args.models_dir)
    head = lm.model.get_output_embeddings()
    with torch.inference_mode():  # first-call costs (allocator, kernels) out of the table
        lm.model(input_ids=torch.randint(100, 1000, (1, 32)), logits_to_keep=1)
    rows = []
    for n in map(int, args.lengths.split(",")):
        ids = torch.randint(100, 1000, (1, n))
        for _ in range(args.repeats):
            with torch.inference_mode():
                t = time.perf_counter()
                with_hook = lm.model(input_ids=ids, logits_to_keep=1).logits
                a = time.perf_counter() - t
                hooks = dict(head._forward_pre_hooks)
                head._forward_pre_hooks.clear()
                try:
                    t = time.perf_counter()
                    without = lm.model(input_ids=ids, logits_to_keep=1).logits
                    b = time.perf_counter() - t
                finally:
                    head._forward_pre_hooks.update(hooks)
            rows.append({"tokens": n, "dense_s": round(a, 3), "strided_s": round(b, 3),
                         "same_logits": bool(torch.equal(with_hook, without))})
            print(f"{n:>6} tokens: dense row {a:.3f} s, strided view {b:.3f} s, same logits {rows[-1]['same_logits']}",
                  flush=True)
    out = ROOT / "bench" / "results" / f"head_copy_{args.model}.json"
    out.write_text(json.dumps({"model": lm.name, "dtype": str(lm.dtype), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
