"""Quick probe of the training-free compressors (uio/compress) on CPU: passkey at 2K tokens, and speed.

A 5-digit pass key is planted at depths 0/25/50/75/100 % of a ~2K-token filler
document (two 1,024-token segments). Each compressor makes memories at 8x and
32x (one prefill and one scoring pass per segment serve both ratios: the
selection is the only step that depends on the ratio), the decoder answers
"What is the pass key?" with the memories as its cache (uio.decoder, slots
re-rotated to positions 0..m-1), and an answer counts if its digits contain
the key. References: the raw text in the prompt, and keep-all memories (each
segment prefilled alone, every token kept).

Speed: compression tokens/s of each compressor's public ``compress`` on the
two segments at 8x, against a plain forward of the same segments.

    .venv/bin/python bench/compress_probe.py [--models smollm2,qwen] [--threads 1] [--trials 1]
        [--depths 0,25,50,75,100] [--methods kvzip,snapkv,keynorm,streaming] [--spaced kvzip] [--out ...]

``--spaced kvzip`` also answers from kvzip's memories with option (b) positions: each head's kept slots
keep their relative spacing inside their segment, scaled into the segment's slots (fractional RoPE
positions), instead of the default consecutive 0..m-1.

Prints a table; writes bench/results/compress_probe.json.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import torch

from bench.common import MODELS_DIR, RESULTS_DIR  # noqa: E402

from uio.compress import make_compressor  # noqa: E402
from uio.compress.base import gather_slots, identity, slots_at_ratio, storage_dtype  # noqa: E402
from uio.decoder import stream_over_memories  # noqa: E402
from uio.memory import Memory  # noqa: E402
from uio.model import load_model  # noqa: E402

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the pass key? Answer with the number only."
METHODS = ["kvzip", "snapkv", "keynorm", "streaming"]


def haystack(tok, key: str, depth: int, seg: int = 1024, segments: int = 2) -> list[list[int]]:
    """``segments`` segments of ``seg`` tokens of filler with the key sentence at ``depth`` %."""
    filler = tok(FILLER, add_special_tokens=False)["input_ids"]
    needle = tok(f" The pass key is {key}. Remember it. {key} is the pass key. ", add_special_tokens=False)["input_ids"]
    total = seg * segments
    body = total - len(needle)
    hay = (filler * (body // len(filler) + 1))[:body]
    at = round(depth / 100 * body)
    hay = hay[:at] + needle + hay[at:]
    return [hay[i:i + seg] for i in range(0, total, seg)]


def answer(lm, memories: list[Memory], prompt_text: str | None = None) -> str:
    content = QUESTION if prompt_text is None else prompt_text + "\n\n" + QUESTION
    gen = stream_over_memories(lm, memories, [{"role": "user", "content": content}], max_new_tokens=12)
    return "".join(gen)


def spaced_positions(indices: list[torch.Tensor], lengths: list[int]) -> torch.Tensor:
    """Option (b): each kept slot at its segment's offset + its source position scaled into the segment's slots.

    indices: per segment (layers, kv, k_j) kept token indices; lengths: tokens per segment.
    Returns (layers, kv, sum k_j) float positions; segment j occupies [off_j, off_j + k_j) as in the default.
    """
    out, off = [], 0
    for idx, n in zip(indices, lengths):
        k = idx.shape[-1]
        out.append(off + idx.float() * (k / n))
        off += k
    return torch.cat(out, -1)


def spaced_answer(lm, mem: Memory, positions: torch.Tensor) -> str:
    """Answer with the memory's keys rotated to per-head ``positions`` (layers, kv, m) instead of 0..m-1."""
    from transformers import DynamicCache

    from uio.adapter import body
    from uio.generate import stream

    keys = mem.keys.to(lm.dtype).permute(0, 2, 1, 3)  # (layers, kv, m, hd)
    values = mem.values.to(lm.dtype).permute(0, 2, 1, 3)
    layers, kv, m, hd = keys.shape
    cos, sin = body(lm).rotary_emb(values, positions.reshape(1, -1))  # RoPE takes fractional positions too
    cos, sin = cos.view(layers, kv, m, hd), sin.view(layers, kv, m, hd)
    rotated = keys * cos + torch.cat([-keys[..., hd // 2:], keys[..., :hd // 2]], -1) * sin
    cache = DynamicCache(config=lm.model.config)
    for layer in range(layers):
        cache.update(rotated[layer][None].contiguous(), values[layer][None].contiguous(), layer)
    gen = stream(lm, [{"role": "user", "content": QUESTION}], past_key_values=cache, prefix_len=m, max_new_tokens=12)
    return "".join(gen)


def memories_at(lm, comp, segments: list[list[int]], ratios: list[int], kept: dict | None = None
                ) -> dict[int, Memory]:
    """The compressor's memories at several ratios from one prefill + one scoring pass per segment.

    The same steps as ``ScoringCompressor.compress_one``, with the selection repeated per ratio;
    ``kept`` (if given) receives per ratio the per-segment kept indices (layers, kv, k).
    """
    parts: dict[int, list] = {r: [] for r in ratios}
    with torch.inference_mode():
        for tokens in segments:
            pre = comp.prefill(lm, tokens)
            scores = comp.score(lm, pre).float()
            for r in ratios:
                k = slots_at_ratio(pre.n, r)
                idx = comp.select(scores, k)
                if kept is not None:
                    kept.setdefault(r, []).append(idx)
                parts[r].append((gather_slots(pre.keys, idx), gather_slots(pre.values, idx)))
    dt = storage_dtype(lm, comp.store)
    out = {}
    for r in ratios:
        comp.ratio = r
        out[r] = Memory(torch.cat([k for k, _ in parts[r]], 1).to(dt), torch.cat([v for _, v in parts[r]], 1).to(dt),
                        list(range(len(segments))), [k.shape[1] for k, _ in parts[r]], [], identity(comp, lm), r)
    return out


def speed(lm, segments: list[list[int]]) -> dict:
    """Tokens/s of a plain forward over each segment and of each compressor's compress() at 8x."""
    n = sum(len(s) for s in segments)
    out = {}

    def plain() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            for s in segments:
                lm.model.model(input_ids=torch.tensor([s]), use_cache=True)
            return n / (time.perf_counter() - t)

    make_compressor("kvzip", 8).compress(lm, segments[:1])  # warm-up: first calls pay one-time costs
    # The plain forward before and after the compressors, the faster of the two: the CPU is shared.
    out["plain forward"] = plain()
    for name in METHODS:
        comp = make_compressor(name, 8)
        t = time.perf_counter()
        comp.compress(lm, segments)
        out[name] = n / (time.perf_counter() - t)
    out["plain forward"] = max(out["plain forward"], plain())
    return out


def probe(model: str, depths: list[int], trials: int, ratios: list[int], rng: random.Random,
          spaced: tuple[str, ...] = (), methods: tuple[str, ...] = tuple(METHODS)) -> dict:
    lm = load_model(model, MODELS_DIR, "cpu", "auto")
    tok = lm.tokenizer
    if not depths:  # speed only
        return {"model": lm.name, "dtype": str(lm.dtype), "passkey": {},
                "speed_tok_s": speed(lm, haystack(tok, "12345", 50))}
    hits: dict[str, dict[str, list[int]]] = {}
    answers = []
    t0 = time.perf_counter()
    for depth in depths:
        for _ in range(trials):
            key = str(rng.randrange(10000, 100000))
            segs = haystack(tok, key, depth)
            rows: dict[str, str] = {"raw context": answer(lm, [], tok.decode(sum(segs, [])))}
            rows["keep-all (1x)"] = answer(lm, [make_compressor("streaming", 1).compress(lm, segs)])
            for name in methods:
                kept: dict = {}
                for r, mem in memories_at(lm, make_compressor(name, ratios[0]), segs, ratios, kept).items():
                    rows[f"{name} {r}x"] = answer(lm, [mem])
                    if name in spaced:
                        pos = spaced_positions(kept[r], [len(t) for t in segs])
                        rows[f"{name} {r}x (b)"] = spaced_answer(lm, mem, pos)
            for row, text in rows.items():
                ok = key in re.sub(r"\D", "", text)
                hits.setdefault(row, {}).setdefault(str(depth), []).append(int(ok))
            answers.append({"depth": depth, "key": key, "answers": rows})
            print(f"  {model} depth {depth:3d}% key {key}: " +
                  ", ".join(f"{k}={int(key in re.sub(chr(92) + 'D', '', v))}" for k, v in rows.items()), flush=True)
    passkey_s = time.perf_counter() - t0
    segs = haystack(tok, "12345", 50)
    return {"model": lm.name, "dtype": str(lm.dtype), "passkey": {row: {d: sum(v) / len(v) for d, v in per.items()}
                                                                 for row, per in hits.items()},
            "speed_tok_s": speed(lm, segs), "passkey_seconds": round(passkey_s, 1), "answers": answers}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2")
    ap.add_argument("--depths", default="0,25,50,75,100")
    ap.add_argument("--ratios", default="8,32")
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--spaced", default="", help="methods also read with option (b) positions, e.g. kvzip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "compress_probe.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    depths = [int(d) for d in args.depths.split(",") if d]  # --depths "": speed only
    ratios = [int(r) for r in args.ratios.split(",")]
    results = {}
    for model in args.models.split(","):
        results[model] = probe(model, depths, args.trials, ratios, random.Random(args.seed),
                               tuple(x for x in args.spaced.split(",") if x), tuple(args.methods.split(",")))
    for model, res in results.items():
        print(f"\n{res['model']} ({res['dtype']}), passkey 5 digits at 2,048 tokens (2 x 1,024-token segments), "
              f"share found per depth")
        print(f"{'method':22s} " + " ".join(f"{d:>5d}%" for d in depths) + "   mean")
        for row, per in res["passkey"].items():
            vals = [per[str(d)] for d in depths]
            print(f"{row:22s} " + " ".join(f"{v:6.2f}" for v in vals) + f" {sum(vals) / len(vals):6.2f}")
        print(f"compression speed, tokens/s ({args.threads} thread(s)):")
        for name, v in res["speed_tok_s"].items():
            rel = v / res["speed_tok_s"]["plain forward"]
            print(f"  {name:16s} {v:8.1f}  ({rel:.2f}x the plain forward)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "depths": depths, "ratios": ratios,
                                    "trials": args.trials, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
