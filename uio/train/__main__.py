"""Train a UIO adapter: ``python -m uio.train --model smollm2 --ratio 32 ...``.

Reads data/corpus/train.jsonl (build it with data/build_corpus.py). Writes
checkpoints and metrics.jsonl under --out-dir, and at the end the adapter
where tome.py finds it (uio/adapters/<model>-<ratio>x.safetensors) unless
--adapter-out says otherwise. ``--resume DIR/checkpoint.pt`` continues a run
exactly (its config comes from the checkpoint).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path

import torch

from uio.train.loop import TrainConfig, default_adapter_path, train

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m uio.train", description=__doc__.split("\n\n")[0])
    for f in fields(TrainConfig):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                        help=f"default {f.default}")
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus" / "train.jsonl")
    ap.add_argument("--heldout", type=Path, default=ROOT / "data" / "corpus" / "heldout.jsonl",
                    help="held-out texts for --eval-every (distill recipe)")
    ap.add_argument("--sources", default="", help="comma-separated corpus sources to train on (default: all)")
    ap.add_argument("--out-dir", type=Path, default=None, help="checkpoints and metrics (default runs/<model>-<ratio>x)")
    ap.add_argument("--adapter-out", type=Path, default=None, help="final adapter (default uio/adapters/...)")
    ap.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    ap.add_argument("--stop-after", type=int, default=None, help="stop at this step (the schedule keeps --steps)")
    ap.add_argument("--models-dir", type=Path, default=ROOT / ".cache" / "models")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from uio.model import load_model
    from uio.runtime import set_threads
    from uio.train.data import read_jsonl

    set_threads(args.threads)
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    if args.resume:
        saved = torch.load(args.resume, map_location="cpu", weights_only=False)["config"]
        cfg = TrainConfig.from_dict({**saved, **{k: v for k, v in given.items() if k == "ckpt_every"}})
        changed = {k for k, v in given.items() if k != "ckpt_every" and saved.get(k) != v}
        if changed:
            print(f"--resume takes the run's config from the checkpoint; ignoring {sorted(changed)}", file=sys.stderr)
    else:
        cfg = TrainConfig(**given)
    out_dir = args.out_dir or (args.resume.parent if args.resume else ROOT / "runs" / f"{cfg.model}-{cfg.ratio}x")
    adapter_out = args.adapter_out or default_adapter_path(cfg.model, cfg.ratio)
    # Master weights in float32 (LoRA updates are small); bf16 autocast on CUDA.
    lm = load_model(cfg.model, args.models_dir, args.device, "float32")
    sources = [s for s in args.sources.split(",") if s]
    texts = read_jsonl(args.corpus, sources)
    corpus_id = hashlib.sha256(args.corpus.read_bytes()).hexdigest()[:16]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps({"train": cfg.__dict__, "corpus": str(args.corpus),
                                                     "corpus_sha256_16": corpus_id, "sources": sources,
                                                     "documents": len(texts)}, indent=2) + "\n")
    heldout = read_jsonl(args.heldout, sources) if cfg.eval_every and args.heldout.exists() else []
    result = train(cfg, lm, texts, out_dir, resume=args.resume, stop_after=args.stop_after, heldout=heldout,
                   adapter_out=adapter_out, extra_meta={"corpus_sha256_16": corpus_id,
                                                        "corpus_sources": ",".join(sources) or "all"})
    if result.step >= cfg.steps:
        print(f"done: {result.step} steps, last loss {result.last.get('loss', float('nan')):.4f}; "
              f"adapter -> {adapter_out}")
    else:
        print(f"stopped at step {result.step}; continue with --resume {out_dir / 'checkpoint.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
