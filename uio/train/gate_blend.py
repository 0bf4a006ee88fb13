"""Blend two gates of one base model weight by weight, then calibrate the blend's threshold quantiles.

    python -m uio.train.gate_blend A.safetensors B.safetensors --alpha 0.5 --model qwen --out gate.safetensors

B fine-tuned from A (same shape, same start) keeps the blend meaningful. The
shipped qwen gate is such a blend: A trained with the local objective (it
keeps planted facts), B = A fine-tuned with the LM objective (lower
perplexity, loses some facts); docs/GATE.md has the figures.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from uio.gate import AttentionGates


def blend(a: AttentionGates, b: AttentionGates, alpha: float) -> AttentionGates:
    """(1 - alpha) * a + alpha * b, parameter by parameter (a new object; its quantiles are empty)."""
    if a.config != b.config:
        raise ValueError(f"gates of different shapes cannot be blended: {a.config} vs {b.config}")
    sa, sb = a.state_dict(), b.state_dict()
    out = AttentionGates(a.config)
    out.load_state_dict({k: (1.0 - alpha) * sa[k] + alpha * sb[k] for k in sa})
    return out.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    from uio.model import embedded_key, load_model
    from uio.runtime import set_threads
    from uio.train.gate import batches, calibrate, stdlib_texts, token_stream

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of B")
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--models-dir", type=Path, default=Path(".cache/models"))
    ap.add_argument("--calibrate", type=int, default=8, help="training sequences for the threshold quantiles")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    set_threads(args.threads)
    key = embedded_key(args.model) or args.model
    gates = blend(AttentionGates.load(args.a, base_model=key), AttentionGates.load(args.b, base_model=key), args.alpha)
    lm = load_model(args.model, args.models_dir, device="cpu", dtype="float32")
    data = batches(token_stream(lm.tokenizer, stdlib_texts()), args.seq_len, 1, random.Random(0))
    gates.quantiles = calibrate(lm.model, gates, [next(data)[:1] for _ in range(args.calibrate)])
    gates.save(args.out)
    print(f"saved {args.out}; thresholds at 30/50/60/70 % eviction:",
          [round(gates.threshold_for(e), 3) for e in (0.3, 0.5, 0.6, 0.7)])


if __name__ == "__main__":
    main()
