"""Probe: do non-uniform (AdaKV-style) KVzip budgets lower next-segment perplexity at equal slots? (issue 18)

KVzip (``uio/compress/kvzip.py``) keeps the same ``k = ceil(n/ratio)`` slots in every layer and KV head.
Here each segment is scored once by the product's ``KVzipCompressor`` and the scores are selected several
ways at the same TOTAL slots per segment (layers x kv_heads x k), sinks kept per head:

- ``uniform``      today's ``ScoringCompressor.select`` (top k per layer and KV head);
- ``layer``        per layer pooled over its KV heads (top kv_heads*k of the layer's (head, token) scores);
- ``global-raw``   pooled over all layers and heads (KVzip paper's non-uniform default), raw scores;
- ``global-norm``  the same after dividing each layer's scores by that layer's mean score;
- ``global-raw-cap2`` global-raw with no head above 2k slots;
- ``uniform@held:X`` a control: uniform with as many slots as X holds once padded (equal cache size).

Scoring is ``bench/eval_compress.py``'s ``ppl`` part: the planted books (same library: ``make_tome`` +
``ingest_all``, ``stored_segments``), the first ``--target`` tokens of each segment after the first, read after
the memories of the ``--prev`` segments before it, placed before the text. ``uniform`` goes through the product
path (``uio.decoder.build_context``, consecutive positions) and must reproduce docs/COMPRESSION.md's kvzip ppl.
Non-uniform selections are padded: each layer holds the largest head count of that layer (ragged across
layers), padded slots masked out per layer and per KV head by an additive 4D mask that a forward pre-hook on
each decoder layer swaps in (as ``uio.cache.base.PolicyCache`` does); each head's kept slots sit at
consecutive positions ending right before the text. Checks (asserted, 1e-4 relative): uniform through the
padded/masked path with ragged junk slots (random keys, at the start of some heads and the end of others)
gives the plain path's NLL; a non-uniform selection gives the same NLL padded per layer or to one global width.

    MALLOC_ARENA_MAX=1 TOME_THREADS=1 nice -n 10 .venv/bin/python -m bench.adakv_probe --model smollm2
    -> bench/results/adakv_probe_<model>.json
"""
from __future__ import annotations

import argparse
import math
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import RESULTS_DIR, table, write_json
from bench.eval_compress import ingest_all, make_tome
from uio.adapter import body
from uio.compress import make_compressor
from uio.compress.base import gather_slots, slots_at_ratio, storage_dtype
from uio.decoder import _rotate_into, build_context
from uio.memory import Memory

VARIANTS = ("uniform", "layer", "global-raw", "global-norm", "global-raw-cap2",
            "uniform@held:global-raw", "uniform@held:global-raw-cap2")
# uniform@held:X -- uniform with as many slots per head as X's selection holds once padded per layer
# (ceil(sum over layers of the largest head count / layers) per segment): X against uniform at equal cache size
MASKS: dict[int, torch.Tensor] = {}  # layer -> additive (1, heads, q, held + q) mask of the forward running now


def _layer_pre_hook(module, args, kwargs):
    mask = MASKS.get(module.self_attn.layer_idx)
    if mask is not None:
        kwargs["attention_mask"] = mask
        return args, kwargs
    return None


# -- selection ---------------------------------------------------------------------------------------
def select(scores: torch.Tensor, k: int, sinks: int, variant: str) -> torch.Tensor:
    """(layers, kv, n) scores -> (layers, kv, n) bool kept, sum = layers * kv * k, first ``sinks`` per head."""
    layers, kv, n = scores.shape
    s = scores.clone()
    if variant == "global-norm":
        s = s / s.mean(dim=(1, 2), keepdim=True).clamp_min(1e-30)
    s[..., :sinks] = float("inf")
    if variant == "uniform":
        flat, budget = s, k  # per (layer, head)
    elif variant == "layer":
        flat, budget = s.reshape(layers, kv * n), kv * k
    elif variant in ("global-raw", "global-norm"):
        flat, budget = s.reshape(1, layers * kv * n), layers * kv * k
    elif variant == "global-raw-cap2":  # global, no head above 2k: each head's candidates are its top 2k
        cap = min(n, 2 * k)
        s = torch.full_like(s, float("-inf")).scatter_(-1, s.topk(cap, dim=-1).indices, s.topk(cap, dim=-1).values)
        flat, budget = s.reshape(1, layers * kv * n), layers * kv * k
    else:
        raise ValueError(variant)
    keep = torch.zeros(flat.shape, dtype=torch.bool)
    keep.scatter_(-1, flat.topk(budget, dim=-1).indices, True)
    return keep.reshape(layers, kv, n)


# -- assembly ----------------------------------------------------------------------------------------
def padded_context(lm, segs: list[dict], keeps: list[torch.Tensor], pad: str = "layer", junk: int = 0,
                   mask_pads: bool = True, seed: int = 0):
    """Cache of the kept slots of ``segs`` (in order), padded per layer (or to one global width), and the masks.

    Each (layer, head) holds its kept slots of all segments in order, at positions P - C .. P - 1 (C: its
    count, P: the largest count over all layers and heads; the text follows at P). ``junk``: extra slots of
    random keys/values per head (ragged: head h of layer l gets (l + h) % (junk + 1) of them, before its kept
    slots for even heads, after them for odd), to check that the masks hide what they must.
    -> (cache, P, valid per layer (kv, width) bool, held slots / kept slots)
    """
    from transformers import DynamicCache

    layers, _, kv, hd = segs[0]["keys"].shape
    dev, dtype = lm.device, lm.dtype
    gen = torch.Generator().manual_seed(seed)
    per = []  # per layer: list over heads of (keys (c, hd), values (c, hd), n_junk, junk_first)
    for layer in range(layers):
        heads = []
        for h in range(kv):
            ks = [s["keys"][layer, keep[layer, h], h] for s, keep in zip(segs, keeps)]
            vs = [s["values"][layer, keep[layer, h], h] for s, keep in zip(segs, keeps)]
            nj = (layer + h) % (junk + 1) if junk else 0
            heads.append((torch.cat(ks), torch.cat(vs), nj, h % 2 == 0))
        per.append(heads)
    counts = torch.tensor([[len(k) for k, _, _, _ in heads] for heads in per])  # (layers, kv)
    width_all = max(int(len(k)) + nj for heads in per for k, _, nj, _ in heads)
    P = int(counts.max())
    rope = body(lm).rotary_emb
    cache = DynamicCache(config=lm.model.config)
    valids, held = [], 0
    for layer, heads in enumerate(per):
        width = width_all if pad == "global" else max(len(k) + nj for k, _, nj, _ in heads)
        K = torch.zeros(kv, width, hd, dtype=dtype)
        V = torch.zeros(kv, width, hd, dtype=dtype)
        pos = torch.zeros(kv, width, dtype=torch.long)
        valid = torch.zeros(kv, width, dtype=torch.bool)
        for h, (k, v, nj, junk_first) in enumerate(heads):
            c = len(k)
            at = nj if junk_first else 0
            K[h, at:at + c], V[h, at:at + c] = k.to(dtype), v.to(dtype)
            pos[h, at:at + c] = torch.arange(P - c, P)
            valid[h, at:at + c] = True
            if nj:
                j0 = 0 if junk_first else c
                K[h, j0:j0 + nj] = (torch.randn(nj, hd, generator=gen) * 4).to(dtype)
                V[h, j0:j0 + nj] = (torch.randn(nj, hd, generator=gen) * 4).to(dtype)
                pos[h, j0:j0 + nj] = torch.randint(0, P, (nj,), generator=gen)
        cos, sin = rope(V[None, :1].to(dev), pos.to(dev))  # (kv, width, hd): each head its own positions
        rotated = torch.empty_like(K)
        _rotate_into(rotated, K, cos, sin)
        cache.update(rotated[None].to(dev), V[None].to(dev), layer)
        valids.append(valid if mask_pads else torch.ones_like(valid))
        held += kv * width
    return cache, P, valids, held / int(counts.sum())


def layer_masks(lm, valids: list[torch.Tensor], q: int) -> dict[int, torch.Tensor]:
    heads = lm.model.config.num_attention_heads
    low = torch.finfo(lm.dtype).min
    causal = torch.full((q, q), low, dtype=lm.dtype).triu_(1)[None].expand(heads, -1, -1)
    out = {}
    for layer, valid in enumerate(valids):
        g = heads // valid.shape[0]
        mem = torch.zeros(valid.shape, dtype=lm.dtype).masked_fill_(~valid, low).repeat_interleave(g, 0)
        out[layer] = torch.cat([mem[:, None].expand(-1, q, -1), causal], 2)[None].to(lm.device)
    return out


@torch.inference_mode()
def nll_of(lm, cache, P: int, ids: list[int], masks: dict[int, torch.Tensor] | None) -> float:
    pos = torch.arange(P, P + len(ids))[None]
    MASKS.clear()
    kw = {}
    if masks is not None:
        MASKS.update(masks)
        kw["attention_mask"] = masks[0]
    try:
        logits = lm.model(input_ids=torch.tensor([ids]), past_key_values=cache, position_ids=pos,
                          cache_position=pos[0], **kw).logits[0, :-1].float()
    finally:
        MASKS.clear()
    return float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))


def plain_uniform_nll(lm, segs: list[dict], index: list[torch.Tensor], ratio: int, ids: list[int]) -> float:
    """The product path: one Memory per segment (``gather_slots``), ``build_context`` consecutive."""
    mems = []
    for j, (s, idx) in enumerate(zip(segs, index)):
        mems.append(Memory(gather_slots(s["keys"], idx), gather_slots(s["values"], idx), [j], [idx.shape[-1]],
                           [(0, s["n"])], "", ratio, idx.transpose(1, 2).to(torch.int32)))
    cache, m = build_context(lm, mems, positions="consecutive")
    return nll_of(lm, cache, m, ids, None)


@contextmanager
def float32(lm):
    """The model in float32 inside the block (bf16 -> fp32 -> bf16 is lossless), as a LoadedModel of that dtype."""
    before = lm.dtype
    lm.model.to(torch.float32)
    try:
        yield replace(lm, dtype=torch.float32)
    finally:
        lm.model.to(before)


def mask_checks(lm, comp, ratio: int, segs, kb_uniform, kb_global, ids, seed: int, tol: float = 1e-4) -> dict:
    """Asserted: uniform via build_context == padded with ragged junk slots masked (!= unmasked);
    global-raw padded per layer == padded to one global width."""
    idx = [comp.select(s["scores"], slots_at_ratio(s["n"], ratio)) for s in segs]
    plain = plain_uniform_nll(lm, segs, idx, ratio, ids)
    cache, P, valids, _ = padded_context(lm, segs, kb_uniform, junk=7, seed=seed)
    junked = nll_of(lm, cache, P, ids, layer_masks(lm, valids, len(ids)))
    cache, P, valids, _ = padded_context(lm, segs, kb_uniform, junk=7, mask_pads=False, seed=seed)
    unmasked = nll_of(lm, cache, P, ids, layer_masks(lm, valids, len(ids)))
    cache, P, valids, _ = padded_context(lm, segs, kb_global)
    layer_pad = nll_of(lm, cache, P, ids, layer_masks(lm, valids, len(ids)))
    cache, P, valids, _ = padded_context(lm, segs, kb_global, pad="global")
    global_pad = nll_of(lm, cache, P, ids, layer_masks(lm, valids, len(ids)))
    out = {"dtype": str(lm.dtype), "check": "masks", "uniform_plain": round(plain, 5),
           "uniform_padded_junk_masked": round(junked, 5), "uniform_junk_unmasked": round(unmasked, 5),
           "global_raw_layer_pad": round(layer_pad, 5), "global_raw_global_pad": round(global_pad, 5)}
    assert abs(junked - plain) <= tol * abs(plain), out
    assert abs(unmasked - plain) > 1e-3 * abs(plain), ("junk must matter unmasked", out)
    assert abs(global_pad - layer_pad) <= tol * abs(layer_pad), out
    return out


# -- the run -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ratios", default="8,32")
    ap.add_argument("--pages", type=int, default=12)
    ap.add_argument("--prev", type=int, default=3)
    ap.add_argument("--target", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path("/tmp/adakv"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check-targets", type=int, default=9, help="targets checked in float32 per ratio")
    ap.add_argument("--books", type=int, default=3, help="books to score (a smoke run: 1)")
    a = ap.parse_args()
    from bench.qa import planted

    work = a.work / a.model / f"planted{a.pages}"
    tome = make_tome(a.model, work, a.threads)
    lm = tome.lm
    for layer in body(lm).layers:
        layer.register_forward_pre_hook(_layer_pre_hook, with_kwargs=True)
    qset = planted.make_books(work / "books", seed=0, pages=a.pages)
    paths = [Path(d["path"]) if "path" in d else work / "books" / d["filename"] for d in qset["documents"]]
    docs = list(ingest_all(tome, paths).values())
    books = [[list(s.token_ids) for s in tome.memories.stored_segments(d)] for d in docs]
    ratios = [int(r) for r in a.ratios.split(",")]
    comp = make_compressor("kvzip", ratios[0])
    out_dtype = storage_dtype(lm)

    # score every segment that is someone's memory once (the scores do not depend on the ratio); kept in
    # --work so a rerun skips it
    t0 = time.perf_counter()
    books = books[:a.books]
    scored, stashed = [], 0
    with torch.inference_mode():
        for b, segs in enumerate(books):
            stash = work / f"adakv_scores_book{b}.pt"
            if stash.is_file():
                scored.append(torch.load(stash))
                stashed += 1
                continue
            book = []
            for tokens in segs[:-1]:
                pre = comp.prefill(lm, tokens)
                book.append({"n": pre.n, "scores": comp.score(lm, pre).float(),
                             # stored in 16 bits and read back, as the product's memories are
                             "keys": pre.keys.to(out_dtype).to(lm.dtype), "values": pre.values.to(out_dtype).to(lm.dtype)})
                del pre
                print(f"scored book {b} segment {len(book)} ({time.perf_counter() - t0:.0f}s)", flush=True)
            torch.save(book, stash)
            scored.append(book)
    score_s = time.perf_counter() - t0
    layers, kv = scored[0][0]["scores"].shape[:2]

    targets = []  # (book, i, ids)
    for b, segs in enumerate(books):
        for i in range(1, len(segs)):
            ids = segs[i][:a.target]
            if len(ids) >= 2:
                targets.append((b, i, ids))

    rows, checks, shares = [], [], {}
    for ratio in ratios:
        comp.ratio = ratio
        keeps, stats = {}, {}
        for v in VARIANTS:
            keeps[v] = []
            slots = held_layer = held_global = 0
            share = torch.zeros(layers)
            for book in scored:
                kb = []
                for s in book:
                    k = slots_at_ratio(s["n"], ratio)
                    if v.startswith("uniform@held:"):  # X's padded size, as a uniform budget
                        cx = keeps[v.split(":")[1]][len(keeps[v])][len(kb)].sum(-1)
                        k = min(s["n"], math.ceil(int(cx.amax(1).sum()) / layers))
                        keep = select(s["scores"], k, comp.sinks(k), "uniform")
                    else:
                        keep = select(s["scores"], k, comp.sinks(k), v)
                    c = keep.sum(-1)  # (layers, kv)
                    assert int(c.sum()) == layers * kv * k, (v, int(c.sum()), layers * kv * k)
                    assert bool(keep[..., :comp.sinks(k)].all())
                    slots += int(c.sum())
                    held_layer += int(c.amax(1).sum()) * kv  # this segment padded per layer
                    held_global += int(c.max()) * layers * kv  # padded to one width (today's rectangular file)
                    share += c.sum(1).float() / (kv * k)
                    kb.append(keep)
                keeps[v].append(kb)
            nseg = sum(map(len, scored))
            shares[f"{v}@{ratio}"] = [round(float(x), 3) for x in share / nseg]
            stats[v] = {"slots": slots, "held_layer_pad": held_layer, "held_global_pad": held_global}
            if v == "uniform":  # the product's selection, exactly
                for book, kb in zip(scored, keeps[v]):
                    for s, keep in zip(book, kb):
                        k = slots_at_ratio(s["n"], ratio)
                        idx = comp.select(s["scores"], k)
                        assert torch.equal(keep, torch.zeros_like(keep).scatter_(-1, idx, True))

        with float32(lm) as lm32:  # masks: exact where bf16 blocking noise cannot hide a leak
            for b, i, ids in targets[:a.check_targets]:
                lo = max(0, i - a.prev)
                checks.append(mask_checks(lm32, comp, ratio, scored[b][lo:i], keeps["uniform"][b][lo:i],
                                          keeps["global-raw"][b][lo:i], ids, seed=b * 10 + i)
                              | {"ratio": ratio, "book": b, "segment": i})
                print(checks[-1], flush=True)
        for v in VARIANTS:
            t = time.perf_counter()
            nll = n = 0.0
            held_ctx, per_target = [], []
            for b, i, ids in targets:
                lo = max(0, i - a.prev)
                segs, kb = scored[b][lo:i], keeps[v][b][lo:i]
                cache, P, valids, held = padded_context(lm, segs, kb)
                x = nll_of(lm, cache, P, ids, layer_masks(lm, valids, len(ids)))
                held_ctx.append(held)
                if v == "uniform":  # the product path gives the same NLL (same shapes: exact in any dtype)
                    idx = [comp.select(s["scores"], slots_at_ratio(s["n"], ratio)) for s in segs]
                    plain = plain_uniform_nll(lm, segs, idx, ratio, ids)
                    checks.append({"ratio": ratio, "dtype": str(lm.dtype), "check": "uniform: plain vs padded path",
                                   "book": b, "segment": i, "plain": round(plain, 5), "padded": round(x, 5)})
                    assert abs(x - plain) <= 1e-4 * abs(plain), checks[-1]
                nll += x
                n += len(ids) - 1
                per_target.append(round(x, 4))
            st = stats[v]
            rows.append({"ratio": ratio, "variant": v, "ppl": round(math.exp(nll / n), 3), "tokens": int(n),
                         "slots": st["slots"], "held_layer_pad": st["held_layer_pad"],
                         "x_layer_pad": round(st["held_layer_pad"] / st["slots"], 3),
                         "held_global_pad": st["held_global_pad"],
                         "x_global_pad": round(st["held_global_pad"] / st["slots"], 3),
                         "x_ctx_held": round(sum(held_ctx) / len(held_ctx), 3),
                         "seconds": round(time.perf_counter() - t, 1), "nll_per_target": per_target})
            print(rows[-1], flush=True)
    paired = []  # per target: does the non-uniform selection beat uniform at equal slots / at equal held slots?
    for ratio in ratios:
        by = {r["variant"]: r for r in rows if r["ratio"] == ratio}
        for v, ref in [(v, "uniform") for v in VARIANTS[1:5]] + [("global-raw", "uniform@held:global-raw"),
                                                                ("global-raw-cap2", "uniform@held:global-raw-cap2")]:
            d = [x - y for x, y in zip(by[v]["nll_per_target"], by[ref]["nll_per_target"])]
            paired.append({"ratio": ratio, "variant": v, "against": ref, "ppl": by[v]["ppl"], "ref_ppl": by[ref]["ppl"],
                           "targets_better": f"{sum(x < 0 for x in d)}/{len(d)}",
                           "ppl_change_pct": round(100 * (by[v]["ppl"] / by[ref]["ppl"] - 1), 1)})
    print(table([{k: r[k] for k in r if k != "nll_per_target"} for r in rows]))
    print(table(paired))
    write_json(RESULTS_DIR / f"adakv_probe_{a.model}.json", {
        "model": a.model, "pages": a.pages, "prev": a.prev, "target": a.target, "layers": layers, "kv_heads": kv,
        "segments_scored": sum(map(len, scored)), "targets": len(targets), "score_seconds": round(score_s, 1),
        "books_scores_from_stash": stashed,
        "threads": a.threads, "rows": rows, "paired": paired, "layer_share": shares, "checks": checks,
        "notes": {"x_layer_pad": "slots held per segment padded to each layer's largest head / kept slots",
                  "x_global_pad": "padded to the largest (layer, head) of the segment (rectangular) / kept slots",
                  "x_ctx_held": "as run: the 1-3 segments' context padded per layer (each head's slots "
                                "of all its segments together) / kept slots; mean over targets",
                  "layer_share": "slots of each layer / the uniform budget, mean over segments"}})


if __name__ == "__main__":
    main()
