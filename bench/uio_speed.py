#!/usr/bin/env python
"""Speed and size of the UIO memory model against the plain base model, measured in one run.

1. Compression throughput (document tokens/s): Encoder.compress versus a plain
   batched forward (with logits) of the same tokens, same batch size.
2. Stored bytes per document token at 8x and 32x versus the raw KV cache.
3. Decode tokens/s with 8K positions of memories in the cache versus plain
   decode over an 8K raw cache (the raw cache comes from a real prefill).

    .venv/bin/python bench/uio_speed.py [--model smollm2|qwen] [--segments 8] [--context 8192]

Prints a table and writes bench/results/uio_speed_<model>_<device>.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import MODELS_DIR, RESULTS_DIR, write_json  # noqa: E402

from uio.adapter import UIOAdapter  # noqa: E402
from uio.decoder import build_cache  # noqa: E402
from uio.encoder import Encoder  # noqa: E402
from uio.memory import Memory, MemoryConfig  # noqa: E402
from uio.model import load_model  # noqa: E402


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, repeats=2) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


@torch.inference_mode()
def decode_tok_s(lm, make_cache, steps: int) -> float:
    """Greedy single-token steps on top of a fresh cache from ``make_cache``."""
    cache, length = make_cache()
    nxt = torch.tensor([[lm.tokenizer.eos_token_id]], device=lm.device)
    sync(lm.device)
    t = time.perf_counter()
    for i in range(steps):
        pos = torch.tensor([[length + i]], device=lm.device)
        out = lm.model(input_ids=nxt, past_key_values=cache, position_ids=pos, cache_position=pos[0])
        nxt = out.logits[:, -1:].argmax(-1)
    sync(lm.device)
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--segments", type=int, default=8, help="segments of 1024 tokens to compress")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=8192, help="cache positions for the decode test")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    lm = load_model(a.model, MODELS_DIR, a.device, a.dtype)
    dev = lm.device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, lm.tokenizer.vocab_size - 100, (a.segments, 1024), generator=g)
    tokens = ids.numel()
    rows, result = [], {"model": lm.name, "device": str(dev), "dtype": str(lm.dtype).removeprefix("torch."),
                        "segments": a.segments, "batch": a.batch, "tokens": tokens}

    def plain():
        with torch.inference_mode():
            for s in range(0, a.segments, a.batch):
                lm.model(ids[s:s + a.batch].to(dev), use_cache=False)

    with torch.inference_mode():
        lm.model(ids[:1, :128].to(dev))  # warm-up
    plain_s = timed(plain, dev)
    result["plain_forward_tok_s"] = tokens / plain_s
    rows.append(("plain batched forward (with logits)", tokens / plain_s, 1.0))
    cfg = lm.model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    raw_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * hd * lm.dtype.itemsize
    result["raw_kv_bytes_per_token"] = raw_per_token
    memories = {}
    adapter = None
    for m in (128, 32):
        if adapter is not None:  # one adapter per model instance: reload a fresh base model
            lm = load_model(a.model, MODELS_DIR, a.device, a.dtype)
        adapter = UIOAdapter(lm, MemoryConfig(num_mem=m))
        enc = Encoder(adapter, batch_size=a.batch)
        segs = ids.tolist()
        enc.compress(segs[:1])  # warm-up
        mem_holder = {}
        s = timed(lambda: mem_holder.__setitem__("m", enc.compress(segs)), dev)
        mem = mem_holder["m"]
        memories[m] = (lm, mem)
        ratio = 1024 // m
        result[f"compress_{ratio}x_tok_s"] = tokens / s
        result[f"compress_{ratio}x_vs_plain"] = (tokens / s) / (tokens / plain_s)
        result[f"bytes_per_token_{ratio}x"] = mem.nbytes / tokens
        rows.append((f"compress {ratio}x (M={m})", tokens / s, (tokens / s) / (tokens / plain_s)))

    # Decode over `context` cache positions: memories (tiled to the length; decode cost depends only on
    # the cache length) versus the raw KV cache of a real prefill of `context` tokens.
    lm8, mem8 = memories[128]
    reps = -(-a.context // mem8.num_slots)
    tiled = Memory(mem8.keys.repeat(1, reps, 1, 1)[:, :a.context], mem8.values.repeat(1, reps, 1, 1)[:, :a.context],
                   [0], [a.context], fingerprint=mem8.fingerprint)
    long_ids = torch.randint(100, lm8.tokenizer.vocab_size - 100, (1, a.context), generator=g).to(dev)

    def raw_cache():
        from transformers import DynamicCache

        cache = DynamicCache(config=lm8.model.config)
        with torch.inference_mode():
            for s in range(0, a.context, 2048):  # chunked prefill keeps CPU memory flat
                pos = torch.arange(s, min(s + 2048, a.context), device=dev)
                lm8.model(input_ids=long_ids[:, s:s + 2048], past_key_values=cache, position_ids=pos[None],
                          cache_position=pos, logits_to_keep=1)
        return cache, a.context

    mem_dec = decode_tok_s(lm8, lambda: build_cache(lm8, [tiled]), a.steps)
    raw_dec = decode_tok_s(lm8, raw_cache, a.steps)
    mem_dec2 = decode_tok_s(lm8, lambda: build_cache(lm8, [tiled]), a.steps)  # bracket the raw run: drift
    mem_dec = (mem_dec + mem_dec2) / 2
    result |= {"decode_context": a.context, "decode_raw_tok_s": raw_dec, "decode_memories_tok_s": mem_dec,
               "decode_vs_raw": mem_dec / raw_dec}
    rows.append((f"decode over {a.context} raw KV positions", raw_dec, 1.0))
    rows.append((f"decode over {a.context} memory slots", mem_dec, mem_dec / raw_dec))

    print(f"\n{lm.name} on {dev} ({result['dtype']}), {tokens:,} document tokens, batch {a.batch}\n")
    print("| measurement | tok/s | ratio |")
    print("|---|---|---|")
    for name, v, r in rows:
        print(f"| {name} | {v:,.1f} | {r:.2f}x |")
    print("\n| stored per document token | bytes | vs raw KV |")
    print("|---|---|---|")
    print(f"| raw KV cache ({result['dtype']}) | {raw_per_token:,} | 1 |")
    for ratio in (8, 32):
        b = result[f"bytes_per_token_{ratio}x"]
        print(f"| UIO {ratio}x memories | {b:,.1f} | 1/{raw_per_token / b:.2f} |")
    out = a.out or RESULTS_DIR / f"uio_speed_{a.model}_{dev.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
