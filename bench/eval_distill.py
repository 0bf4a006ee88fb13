#!/usr/bin/env python
"""Held-out distillation losses of memories: a training run's checkpoints against the untrained adapter,
KVzip (training-free) at the same ratio, no memory at all, and the full segment (0 by construction).

The held-out batches are the ones ``Trainer`` evaluates (``--eval-every``): the run's config from its
checkpoint, ``data/corpus/heldout.jsonl``, seed + 1.

    .venv/bin/python bench/eval_distill.py runs/distill-smollm2-8x-l256/checkpoint.pt --threads 1

Prints a table and writes bench/results/train_heldout_<model>_<ratio>x_l<l>.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import MODELS_DIR, RESULTS_DIR, ROOT, write_json  # noqa: E402
from uio.model import load_model  # noqa: E402
from uio.train.data import DistillBatches, read_jsonl  # noqa: E402
from uio.train.distill import evaluate  # noqa: E402
from uio.train.loop import TrainConfig, Trainer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--heldout", type=Path, default=ROOT / "data" / "corpus" / "heldout.jsonl")
    ap.add_argument("--batches", type=int, default=0, help="held-out batches (default: the run's eval_batches)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-kvzip", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    state = torch.load(a.checkpoint, map_location="cpu", weights_only=False)
    cfg = TrainConfig.from_dict({**state["config"], "eval_every": state["config"].get("eval_every") or 1,
                                 **({"eval_batches": a.batches} if a.batches else {})})
    lm = load_model(cfg.model, MODELS_DIR, "cpu", "float32")
    heldout = read_jsonl(a.heldout)
    data = DistillBatches(heldout, lm.tokenizer, cfg.segment_len, cfg.segments, cfg.batch_size, seed=cfg.seed + 7)
    trainer = Trainer(cfg, lm, data, Path(tempfile.mkdtemp()), heldout=heldout)
    batches, dcfg = trainer.eval_data, cfg.distill
    rows: dict[str, dict] = {}

    def run(name, fn):
        t = time.perf_counter()
        rows[name] = {**fn(), "seconds": time.perf_counter() - t}
        print(f"{name:28s} " + " ".join(f"{k}={v:.3f}" for k, v in rows[name].items()), flush=True)

    def none(o):
        k = o.keys[:, :, :0]
        return k, o.values[:, :, :0]

    def full(o):
        return o.keys, o.values

    def kvzip(o):
        from uio.compress.kvzip import KVzipCompressor

        comp = KVzipCompressor(ratio=cfg.ratio)
        ks, vs = zip(*(comp.compress_one(lm, row.tolist())[:2] for row in o.ids))
        return torch.stack(ks, 1), torch.stack(vs, 1)

    run("full segment (teacher)", lambda: evaluate(trainer.encoder, batches, dcfg, cfg.seed, memorize=full))
    run("no memory", lambda: evaluate(trainer.encoder, batches, dcfg, cfg.seed, memorize=none))
    if not a.no_kvzip:
        run(f"KVzip {cfg.ratio}x (training-free)", lambda: evaluate(trainer.encoder, batches, dcfg, cfg.seed,
                                                                     memorize=kvzip))
    start = f"UIO from {Path(cfg.init_adapter).stem} (step 0)" if cfg.init_adapter else "UIO untrained (step 0)"
    run(start, trainer.evaluate)
    trainer.adapter.load_state_dict(state["adapter"])
    run(f"UIO distilled (step {state['step']})", trainer.evaluate)
    out = {"model": lm.name, "checkpoint": str(a.checkpoint), "config": cfg.__dict__,
           "batches": len(batches), "rows": rows}
    path = RESULTS_DIR / f"train_heldout_{cfg.model}_{cfg.ratio}x_l{cfg.segment_len}.json"
    write_json(path, out)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
