"""Where 32x slots go when a pass key sits at the start of a document (the depth-0 miss of kvzip-fast).

    .venv/bin/python bench/depth0_probe.py      # Qwen; prints digits kept per KV head, kvzip vs kvzip-fast
    .venv/bin/python bench/depth0_probe.py --span-cap 0.25   # the same with each 32-token window capped

The first 1,024-token segment of a 2K pass-key document (seed 3) at depth 0 and 0.5 (at 0.5 the key
falls in the second segment: the row is the opening's share alone); docs/COMPRESSION.md quotes it.
"""
from __future__ import annotations

import torch

from bench.common import load_model
from bench.qa import passkey
from uio.compress import make_compressor


def key_positions(tok, ids: list[int], key: str) -> list[int]:
    """Token indices of the key's first occurrence (Qwen writes one token per digit); [] when absent."""
    pieces = [tok.decode([t]) for t in ids]
    n = len(key)
    first = next((i for i in range(len(ids) - n + 1) if "".join(pieces[i:i + n]).strip() == key), None)
    return [] if first is None else list(range(first, first + n))


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--span-cap", type=float, default=0.0, help="ScoringCompressor.span_cap (0: none)")
    span_cap = ap.parse_args().span_cap
    lm = load_model("qwen")
    tok = lm.tokenizer
    for depth in (0.0, 0.5):
        text, key = passkey.passkey_document(tok, 2048, depth, seed=3)
        ids = tok(text, add_special_tokens=False)["input_ids"][:1024]
        kp = key_positions(tok, ids, key)
        print(f"depth {depth} key {key} at tokens {kp} of {len(ids)}")
        for name in ("kvzip", "kvzip-fast"):
            _, _, index = make_compressor(name, 32, span_cap=span_cap).compress_one(lm, ids)
            layers, heads, k = index.shape
            kept = torch.zeros(layers, heads, len(ids), dtype=torch.bool)
            kept.scatter_(2, index.long().cpu(), True)
            per = kept[:, :, kp].sum(-1).float()  # the key's tokens kept, per layer and KV head
            label = f"{name} cap {span_cap}" if span_cap else name
            print(f"  {label}: slots {k}, mean digits kept per head {per.mean():.2f}/{len(key)}, heads with all: "
                  f"{(per == len(key)).float().mean():.2f}, with none: {(per == 0).float().mean():.2f}; "
                  f"first 32 tokens' share of slots {kept[:, :, :32].float().sum(-1).mean() / k:.2f}")


if __name__ == "__main__":
    main()
