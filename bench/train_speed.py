#!/usr/bin/env python
"""Cost of one training token relative to one plain forward token, measured in one run.

The GPU-time estimate in docs/TRAINING.md scales from this ratio: a training
step (``chain_step``: encoder forward + backward, continuation and
auto-encoding decoder forwards + backwards, recall) over B*T*l tokens against
the base model's plain forward (with logits) over the same tokens. The
distillation recipe (issue 20, ``distill_step`` with a memory-mode adapter:
frozen ordinary pass, <mem> tokens, teacher and student over the l/4-token
probe, attention matching, auto-encoding over l/8) is measured on the same
tokens.

    .venv/bin/python bench/train_speed.py [--model smollm2] [--segment-len 128] [--segments 3] [--threads 1]

Prints a table and writes bench/results/train_speed_<model>_<device>_l<l>_t<T>.json.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

from bench.common import MODELS_DIR, RESULTS_DIR, ROOT, write_json  # noqa: E402

from uio.model import load_model  # noqa: E402
from uio.train.chain import chain_step  # noqa: E402
from uio.train.loop import TrainConfig, Trainer  # noqa: E402
from uio.train.data import ChainBatches, DistillBatches  # noqa: E402
from uio.train.distill import DistillConfig, distill_step  # noqa: E402
from uio.train.tbptt import ReservoirTBPTT  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--segment-len", type=int, default=128)
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--ratio", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = load_model(a.model, MODELS_DIR, a.device, "float32")
    cfg = TrainConfig(model=a.model, recipe="uio", ratio=a.ratio, segment_len=a.segment_len, segments=a.segments,
                      batch_size=a.batch_size, capacity=2, steps=10, warmup=1)
    text = ["The harbour was quiet in winter, and the boats lay on the shingle. " * 400]
    trainer = Trainer(cfg, lm, ChainBatches(text, lm.tokenizer, cfg.segment_len, cfg.segments, cfg.batch_size),
                      Path("/tmp/tome-train-speed"))
    batch = next(trainer.data).to(lm.device)
    tokens = batch.numel()
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)

    def timed_once(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    def plain():
        with torch.inference_mode():
            lm.model(input_ids=batch.view(-1, cfg.segment_len))

    def step(weights):
        def run():
            trainer.opt.zero_grad(set_to_none=True)
            chain_step(trainer.encoder, batch, ReservoirTBPTT(cfg.capacity, rng=random.Random(0)), weights,
                       rng=random.Random(0), autocast=trainer.autocast)
        return run

    from uio.train.chain import ObjectiveWeights

    dcfg = TrainConfig(**{**cfg.__dict__, "recipe": "distill"})
    distiller = Trainer(dcfg, lm, DistillBatches(text, lm.tokenizer, cfg.segment_len, cfg.segments, cfg.batch_size,
                                                 passkey=0.0, planted=0.0), Path("/tmp/tome-train-speed-distill"))
    dbatch = next(distiller.data)
    assert dbatch.segments.shape == batch.shape  # as many tokens as the old recipe's step

    kvzip = Trainer(TrainConfig(**{**dcfg.__dict__, "init": "kvzip"}), lm, distiller.data,
                    Path("/tmp/tome-train-speed-kvzip"))

    def distill(weights: DistillConfig, who: Trainer = distiller):
        def run():
            who.opt.zero_grad(set_to_none=True)
            distill_step(who.encoder, dbatch, ReservoirTBPTT(cfg.capacity, rng=random.Random(0)), weights,
                         rng=random.Random(0), autocast=who.autocast)
        return run

    fns = {"plain forward (logits)": plain,
           "train step, continuation only": step(ObjectiveWeights(1.0, 0.0, 0.0)),
           "train step, all objectives": step(cfg.weights),
           "distill step, KL only": distill(DistillConfig(1.0, 0.0, 0.0, 0.0)),
           "distill step, all terms": distill(dcfg.distill),
           "distill step, all terms, --init kvzip": distill(dcfg.distill, kvzip)}
    # Rounds of every row in turn, best of the rounds per row: a load spike on a shared host then hits one
    # round of every row instead of all repeats of one.
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(a.repeats):
        for name, fn in fns.items():
            times[name].append(timed_once(fn))
    rows = {name: min(t) for name, t in times.items()}
    base = rows["plain forward (logits)"]
    print(f"{lm.name} on {lm.device}, {a.threads} thread(s), B={a.batch_size} T={a.segments} l={a.segment_len} "
          f"({tokens} tokens), M={a.segment_len // a.ratio}")
    print(f"{'':38s} {'seconds':>8s} {'tok/s':>8s} {'x forward':>10s}")
    out = {}
    for name, sec in rows.items():
        print(f"{name:38s} {sec:8.2f} {tokens / sec:8.1f} {sec / base:10.2f}")
        out[name] = {"seconds": sec, "tok_s": tokens / sec, "x_forward": sec / base, "all_seconds": times[name]}
    speedup = rows["train step, all objectives"] / rows["distill step, all terms"]
    print(f"distill recipe vs the old one (all terms): {speedup:.2f}x faster per training token")
    res = {"model": lm.name, "speedup_distill_vs_uio": speedup, "device": str(lm.device), "threads": a.threads, "tokens": tokens,
           "config": {"B": a.batch_size, "T": a.segments, "l": a.segment_len, "M": a.segment_len // a.ratio},
           "rows": out}
    path = RESULTS_DIR / f"train_speed_{a.model}_{lm.device.type}_l{a.segment_len}_t{a.segments}.json"
    write_json(path, res)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
