"""Probe (not the product): KVzip keeping one set of tokens for every layer and KV head.

Each token is scored by its best per-head KVzip score (each head's scores divided by their maximum),
and the top k tokens are kept in every head, instead of each head's own top k. Runs
``bench/eval_compress.py`` with that selection; give it a fresh ``--work`` (memory files are named
by the compressor's identity, which this probe does not change) and a ``--tag``:

    .venv/bin/python bench/tokensel_probe.py passkey --model qwen --lengths 2048 \\
        --methods kvzip@32,kvzip@8 --work /tmp/ps_tok --tag tokensel

Measured (docs/COMPRESSION.md): worse than per-head selection (2K pass key 32x 0/5, 8x 3/5 vs 5/5).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uio.compress.kvzip import KVzipCompressor  # noqa: E402


def select_tokens(self, scores: torch.Tensor, k: int) -> torch.Tensor:
    layers, heads, _ = scores.shape
    norm = scores / scores.amax(-1, keepdim=True).clamp_min(1e-12)  # each head's best token scores 1
    token = norm.amax(dim=(0, 1)).clone()
    token[:self.sinks(k)] = float("inf")
    return token.topk(k).indices.sort().values.expand(layers, heads, k).contiguous()


if __name__ == "__main__":
    KVzipCompressor.select = select_tokens
    from bench import eval_compress

    eval_compress.main(sys.argv[1:])
