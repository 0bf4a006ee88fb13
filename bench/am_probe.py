"""Probe: does Attention-Matching (arXiv 2602.16284) refinement of KVzip's kept slots help? (issue 18)

For each kept slot set (KVzip, 8x or 32x), fit on the segment's own reconstruction queries:
- bias: per-slot log-weights w >= 0 (non-negative least squares) so that the kept slots' attention mass
  reproduces the full segment's for every query (the dropped tokens' mass goes to the slots near them);
- values: least squares (ridge towards the original values) so that attention over the kept slots, with
  that bias, reproduces the full segment's attention output.
Then next-segment perplexity with the memories of the 3 segments before, through an attention that adds
the bias as an additive float mask. Prints a table; writes bench/results/am_probe_<model>.json.

    python bench/am_probe.py --model smollm2 --ratios 8,32
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from transformers import AttentionInterface

from bench.common import RESULTS_DIR, table, write_json
from uio.compress.base import causal_offset_mask, gather_slots, slots_at_ratio
from uio.compress.kvzip import KVzipCompressor
from uio.decoder import build_context
from uio.memory import Memory

BIAS: dict[int, torch.Tensor] = {}  # layer -> (kv, m) additive bias on the first m keys


def biased_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
    q_len, k_len = query.shape[2], key.shape[2]
    mask = causal_offset_mask(q_len, k_len, query.device, query.dtype)[None, None].repeat(1, query.shape[1], 1, 1)
    b = BIAS.get(module.layer_idx)
    if b is not None:
        g = query.shape[1] // b.shape[0]
        mask[..., :b.shape[1]] += b.repeat_interleave(g, 0)[None, :, None, :].to(query.dtype)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("tome_probe_bias", biased_attention)


@dataclass
class Stash(KVzipCompressor):
    """KVzip that keeps the reconstruction queries and rotated segment keys per layer (one chunk)."""

    def max_attention(self, module, query, keys, q_len, lo, width):
        self.seen[module.layer_idx] = (query[0].float().clone(), keys[0, :, lo:lo + width].float().clone())
        return super().max_attention(module, query, keys, q_len, lo, width)


def refit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kept: torch.Tensor, scale: float,
          bias: bool, values: bool, ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """q (G*r, d) queries of one KV head's group, k (n, d) rotated keys, v (n, d), kept (s,) -> (bias (s,), v' (s, d))."""
    logits = (q @ k.T) * scale  # (rows, n)
    logits = logits - logits.max(1, keepdim=True).values
    e = logits.exp()
    z = e.sum(1)
    out = (e @ v) / z[:, None]
    es = e[:, kept]
    b = torch.zeros(len(kept))
    w = torch.ones(len(kept))
    if bias:
        # rows scaled by 1/z: match the share of mass, each query counted alike
        sol, _ = nnls((es / z[:, None]).double().numpy(), np.ones(len(z)), maxiter=2000)
        w = torch.from_numpy(sol).float().clamp(min=1e-3, max=1e3)
        b = w.log()
    vk = v[kept]
    if values:
        a = es * w[None]
        a = a / a.sum(1, keepdim=True)
        lhs = a.T @ a + ridge * torch.eye(len(kept))
        rhs = a.T @ out + ridge * vk
        vk = torch.linalg.solve(lhs, rhs)
    return b, vk


def compress(lm, comp: Stash, tokens: list[int], variants: dict[str, tuple[bool, bool]]
             ) -> dict[str, tuple[Memory, torch.Tensor]]:
    """KVzip's kept slots of one segment (scored once), refined per variant: name -> (memory, bias)."""
    comp.seen = {}
    pre = comp.prefill(lm, tokens)
    kk = slots_at_ratio(pre.n, comp.ratio)
    scores = comp.score(lm, pre).float()
    index = comp.select(scores, kk)  # (layers, kv, s)
    keys = gather_slots(pre.keys, index)
    layers, _, kv, hd = pre.keys.shape
    g = lm.model.config.num_attention_heads // kv
    out = {}
    for name, (bias, values) in variants.items():
        vals = gather_slots(pre.values, index).float()
        b_all = torch.zeros(layers, kv, kk)
        if bias or values:
            for layer in range(layers):
                q, krot = comp.seen[layer]  # q (H, r, d), krot (kv, n, d)
                for h in range(kv):
                    qs = q[h * g:(h + 1) * g].reshape(-1, hd)
                    b, vk = refit(qs, krot[h], pre.values[layer, :, h].float(), index[layer, h], hd ** -0.5,
                                  bias, values)
                    b_all[layer, h] = b
                    vals[layer, :, h] = vk
        out[name] = (Memory(keys, vals.to(keys.dtype), [0], [kk], [(0, pre.n)], "", comp.ratio,
                            index.transpose(1, 2).to(torch.int32)), b_all)
    comp.seen = {}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ratios", default="8,32")
    ap.add_argument("--prev", type=int, default=3)
    ap.add_argument("--target", type=int, default=256)
    ap.add_argument("--books", type=int, default=3)
    a = ap.parse_args()
    from pathlib import Path

    from bench.common import load_model
    from bench.qa import planted
    from ingest import read_document, split_segments

    lm = load_model(a.model)
    work = Path("/tmp/am_probe")
    qset = planted.make_books(work / "books", seed=0, pages=12)
    docs = []
    for d in qset["documents"][:a.books]:
        p = Path(d["path"]) if "path" in d else work / "books" / d["filename"]
        segs = split_segments(read_document(p).pages, lm.tokenizer, 1024)
        docs.append([list(s.token_ids) for s in segs])
    variants = {"kvzip": (False, False), "kvzip+values": (False, True), "kvzip+bias": (True, False),
                "kvzip+bias+values": (True, True)}
    rows, t0 = [], time.time()
    for ratio in [int(r) for r in a.ratios.split(",")]:
        comp = Stash(ratio=ratio, store="model")
        made = [[compress(lm, comp, s, variants) for s in segs] for segs in docs]
        print(f"{ratio}x compressed {time.time() - t0:.0f}s", flush=True)
        for name, (bias, _values) in variants.items():
            nll, n = 0.0, 0
            for segs, mems_of in zip(docs, made):
                for i in range(1, len(segs)):
                    ids = segs[i][:a.target]
                    before = [m[name] for m in mems_of[max(0, i - a.prev):i]]
                    mems = [Memory(m.keys, m.values, [j], m.slots, m.token_spans, "", ratio, m.positions)
                            for j, (m, _) in enumerate(before)]
                    cache, m = build_context(lm, mems, positions="consecutive")
                    BIAS.clear()
                    if bias:
                        for layer in range(len(cache.layers)):
                            BIAS[layer] = torch.cat([b[layer] for _, b in before], 1)
                    prev_impl = lm.model.config._attn_implementation
                    lm.model.config._attn_implementation = "tome_probe_bias"
                    try:
                        pos = torch.arange(m, m + len(ids))[None]
                        with torch.inference_mode():
                            logits = lm.model(input_ids=torch.tensor([ids]), past_key_values=cache,
                                              position_ids=pos, cache_position=pos[0]).logits[0, :-1].float()
                    finally:
                        lm.model.config._attn_implementation = prev_impl
                    nll += float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
                    n += len(ids) - 1
            rows.append({"ratio": ratio, "variant": name, "ppl": round(math.exp(nll / n), 3), "tokens": n})
            print(rows[-1], f"{time.time() - t0:.0f}s", flush=True)
    print(table(rows))
    write_json(RESULTS_DIR / f"am_probe_{a.model}.json", {"model": a.model, "prev": a.prev, "target": a.target,
                                                         "rows": rows})


if __name__ == "__main__":
    main()
