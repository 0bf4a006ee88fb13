#!/usr/bin/env python
"""Recent-cache policies at equal eviction: AttentionGate vs StreamingLLM vs H2O vs FullCache.

1. Perplexity on held-out text (standard-library docstrings the gate never
   trained on), read in chunks with the policy evicting after each chunk.
   The first ``--skip`` tokens are not scored (every policy holds them all).
2. Planted-fact QA through the chat template: a made-up fact early in a
   held-out passage, the question after it; greedy answer via
   ``uio.generate.stream``; correct when the answer contains the fact's value.
3. KV bytes held and decode tokens/s at one context length (``--speed-len``)
   at 50 % eviction, ratios to FullCache measured in the same run (full read through PolicyCache
   like the others: ``ChunkedFullCache``).
4. With UIO memories present: a memory prefix (``--adapter``, or an untrained
   one with LoRA at its zero init: the point is that the policy leaves the
   prefix whole), perplexity of the held-out text read after it, full vs gate.

    .venv/bin/python bench/eval_cache.py --model smollm2 --seqs 2 --len 256 --skip 48 --chunk 32 --qa 12 \\
        --speed-len 768 --threads 2

Writes bench/results/eval_cache_<model>.json and docs/cache_policies.png.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import MODELS_DIR, RESULTS_DIR, ROOT, write_json  # noqa: E402

from uio import generate, shipped  # noqa: E402
from uio.cache import AttentionGate, ChunkedFullCache, PolicyCache, load_gates, resolve_policy  # noqa: E402
from uio.model import embedded_key, load_model  # noqa: E402
from uio.runtime import set_threads  # noqa: E402
from uio.train.gate import heldout_texts, token_stream  # noqa: E402

RATES = (0.3, 0.5, 0.7)
EVICTING = ("streaming", "h2o", "gate")
NAMES = ["Alder", "Brook", "Cedar", "Dune", "Ember", "Fjord", "Grove", "Heath", "Isle", "Juniper", "Kestrel",
         "Larch", "Moor", "Nettle", "Orchid", "Pine", "Quill", "Rowan", "Sorrel", "Thistle"]


def policy_for(name: str, rate: float | None, key: str, gate_path: Path, gate_window: float = 0.0):
    """The policy of one row. Full is read through PolicyCache in chunks too, like the policies it is
    compared with (the same chunks, the same machinery)."""
    if name == "full":
        return ChunkedFullCache()
    return resolve_policy(name, rate, key, gate_file=gate_path, gate_window=gate_window)


@torch.inference_mode()
def perplexity(lm, policy, ids: torch.Tensor, chunk: int, skip: int, cache=None, prefix_len: int = 0
               ) -> tuple[float, float, int]:
    """(mean NLL over tokens after ``skip``, eviction rate at the end, tokens scored)."""
    pc = PolicyCache(lm.model, policy, cache, prefix_len)
    nll, n = 0.0, 0
    for i in range(0, ids.shape[1], chunk):
        piece = ids[:, i:i + chunk]
        logits = pc.forward(piece).logits[0].float()
        pc.evict()
        # Logit j predicts token i + j + 1.
        targets = ids[0, i + 1:i + 1 + piece.shape[1]]
        logits = logits[:len(targets)]
        first = max(skip - (i + 1), 0)
        if first < len(targets):
            nll += float(F.cross_entropy(logits[first:], targets[first:], reduction="sum"))
            n += len(targets) - first
    return nll / n, pc.eviction_rate(), n


def qa_items(tokenizer, texts: list[str], count: int, passage_tokens: int, seed: int = 0) -> list[dict]:
    """Held-out passages with a made-up fact planted in their first fifth."""
    rng = random.Random(seed)
    items = []
    for k in range(count):
        text = texts[k % len(texts)]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        start = rng.randrange(0, max(1, len(ids) - passage_tokens))
        passage = tokenizer.decode(ids[start:start + passage_tokens])
        name, code = rng.choice(NAMES), str(rng.randrange(1000, 10000))
        fact = f" The secret code of the {name} vault is {code}. "
        cut = len(passage) // 5
        cut = passage.rfind(" ", 0, cut) if " " in passage[:cut] else cut
        doc = passage[:cut] + fact + passage[cut:]
        messages = [{"role": "user", "content": f"{doc}\n\nWhat is the secret code of the {name} vault? "
                                                "Answer with the number only."}]
        items.append({"messages": messages, "answer": code})
    return items


def qa_accuracy(lm, policy, items: list[dict], chunk: int) -> tuple[float, float]:
    if not items:  # --qa 0: perplexity only
        return float("nan"), float("nan")
    hits, rates = 0, []
    for item in items:
        gen = generate.stream(lm, item["messages"], policy, max_new_tokens=20, chunk=chunk,
                              evict_every=chunk)  # it restates the question first
        text = "".join(gen)
        hits += item["answer"] in text
        rates.append(gen.stats.eviction_rate)
    return hits / len(items), sum(rates) / len(rates)


def speed(lm, policy, ids: torch.Tensor, chunk: int, new_tokens: int) -> dict:
    messages = [{"role": "user", "content": lm.tokenizer.decode(ids[0])}]
    gen = generate.stream(lm, messages, policy, max_new_tokens=new_tokens, chunk=chunk, evict_every=chunk)
    for _ in gen:
        pass
    s = gen.stats
    return {"decode_tok_s": s.decode_tok_s, "prefill_tok_s": s.prefill_tok_s, "kv_bytes_held": sum(s.kv_bytes_held),
            "eviction_rate": s.eviction_rate, "new_tokens": s.new_tokens, "prompt_tokens": s.prompt_tokens}


def plot(results: dict, path: Path, model: str, rates: tuple[float, ...] = RATES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    full = results["full"]
    for name in EVICTING:
        rows = [results[f"{name}@{r}"] for r in rates if f"{name}@{r}" in results]
        x = [100 * row["eviction_rate"] for row in rows]
        axes[0].plot(x, [row["ppl"] for row in rows], "o-", label=name)
        x_qa = [100 * row["qa_eviction_rate"] for row in rows]  # the QA prompts evict a little less
        axes[1].plot(x_qa, [100 * row["qa_acc"] for row in rows], "o-", label=name)
    axes[0].axhline(full["ppl"], color="k", ls="--", label="full")
    axes[1].axhline(100 * full["qa_acc"], color="k", ls="--", label="full")
    axes[0].set(xlabel="eviction of the recent cache (%)", ylabel="held-out perplexity (lower is better)")
    axes[1].set(xlabel="eviction of the recent cache (%)", ylabel="planted-fact QA accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Cache policies at equal eviction ({model})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def speed_table(lm, stream: torch.Tensor, args, gate_path: Path, key: str) -> dict[str, dict]:
    """KV bytes and decode tok/s per policy at ``--speed-len`` tokens, 50 % eviction; ratios to full."""
    speed_ids = stream[:args.speed_len][None]
    speeds: dict[str, dict] = {}
    for _ in range(args.speed_repeats):  # interleaved rounds, best decode speed kept (a shared machine is noisy)
        for name in ("full",) + EVICTING:
            policy = policy_for(name, 0.5, key, gate_path)
            got = speed(lm, policy, speed_ids, args.chunk, args.speed_new)
            if name not in speeds or got["decode_tok_s"] > speeds[name]["decode_tok_s"]:
                speeds[name] = got
    print(f"\ncontext {args.speed_len} tokens, {args.speed_new} new, 50 % eviction")
    print(f"{'policy':<12}{'KV bytes':>12}{'x full':>8}{'decode tok/s':>14}{'x full':>8}")
    for name, s in speeds.items():
        s["bytes_vs_full"] = s["kv_bytes_held"] / speeds["full"]["kv_bytes_held"]
        s["decode_vs_full"] = s["decode_tok_s"] / speeds["full"]["decode_tok_s"] if speeds["full"]["decode_tok_s"] else 0
        print(f"{name:<12}{s['kv_bytes_held']:>12}{s['bytes_vs_full']:>8.2f}{s['decode_tok_s']:>14.1f}"
              f"{s['decode_vs_full']:>8.2f}")

    return speeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seqs", type=int, default=2)
    ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--skip", type=int, default=48)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--qa", type=int, default=12)
    ap.add_argument("--qa-len", type=int, default=200, help="passage tokens per QA item")
    ap.add_argument("--speed-len", type=int, default=768)
    ap.add_argument("--speed-new", type=int, default=32)
    ap.add_argument("--speed-repeats", type=int, default=3)
    ap.add_argument("--speed-only", action="store_true", help="only the speed table (its own JSON)")
    ap.add_argument("--gate", type=Path, default=None, help="gate weights (default: the shipped ones)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-uio", action="store_true")
    ap.add_argument("--adapter", type=Path, default=None, help="a trained UIO adapter for the memory row")
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="target eviction rates, comma-separated")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed table")
    ap.add_argument("--policies", default=",".join(EVICTING), help="evicting policies to run, comma-separated")
    ap.add_argument("--gate-window", type=float, default=0.0, help="share of the budget the gate keeps as a "
                                                                   "recency window (resolve_policy gate_window)")
    ap.add_argument("--no-threshold", action="store_true", help="skip the gate at its own threshold (no target)")
    ap.add_argument("--match-gate", action="store_true",
                    help="run StreamingLLM and H2O at the eviction the gate actually reached at each rate "
                         "(the gate's fixed threshold over- or undershoots a target)")
    ap.add_argument("--tag", default="", help="suffix of the JSON and plot names (eval_cache_<model>_<tag>.json)")
    args = ap.parse_args()

    set_threads(args.threads)
    key = embedded_key(args.model) or args.model
    gate_path = args.gate or shipped.gate_path(key)
    lm = load_model(args.model, args.models_dir, device=args.device)
    texts = heldout_texts()
    stream = token_stream(lm.tokenizer, texts)
    step = max(args.len, (len(stream) - args.len) // max(args.seqs, 1))
    seqs = [stream[i * step:i * step + args.len][None].to(lm.device) for i in range(args.seqs)]
    items = qa_items(lm.tokenizer, [t for _, t in texts][::-1], args.qa, args.qa_len)
    if args.speed_only:
        speeds = speed_table(lm, stream, args, gate_path, key)
        path = RESULTS_DIR / f"eval_cache_{key}_speed{args.speed_len}.json"
        path.write_text(json.dumps({"model": key, "device": str(lm.device), "dtype": str(lm.dtype),
                                    "context": args.speed_len, "new_tokens": args.speed_new,
                                    "target_eviction": 0.5, "policies": speeds}, indent=2))
        print(f"\nwrote {path.relative_to(ROOT)}")
        return

    rates = tuple(float(r) for r in args.rates.split(","))
    names = args.policies.split(",")
    if args.match_gate:  # the gate first at each rate: the others then take its measured eviction
        if "gate" not in names:
            raise SystemExit("--match-gate needs the gate among --policies")
        names = ["gate"] + [n for n in names if n != "gate"]
    configs = [("full", None)] + [(name, r) for r in rates for name in names]
    results: dict[str, dict] = {}
    t0 = time.perf_counter()

    def measure(name: str, target: float | None, policy, qa_policy) -> dict:
        """Perplexity over ``seqs`` and QA accuracy over ``items``: one results row."""
        nlls, evs, ns = zip(*(perplexity(lm, policy, ids, args.chunk, args.skip) for ids in seqs))
        nll = sum(a * b for a, b in zip(nlls, ns)) / sum(ns)
        acc, qa_ev = qa_accuracy(lm, qa_policy, items, args.chunk)
        return {"policy": name, "target_eviction": target, "eviction_rate": sum(evs) / len(evs),
                "ppl": math.exp(nll), "qa_acc": acc, "qa_eviction_rate": qa_ev, "tokens_scored": sum(ns)}

    def report(tag: str, row: dict, label: str | None = None) -> None:
        results[tag] = row
        row["ppl_delta_pct"] = 100 * (row["ppl"] / results["full"]["ppl"] - 1)
        print(f"{label or tag:<16}{100 * row['eviction_rate']:>9.1f}{row['ppl']:>9.2f}{row['ppl_delta_pct']:>+9.1f}"
              f"{100 * row['qa_acc']:>7.0f}{100 * row['qa_eviction_rate']:>12.1f}", flush=True)

    print(f"{'policy':<16}{'evict %':>9}{'ppl':>9}{'d ppl %':>9}{'QA %':>7}{'QA evict %':>12}")
    for name, target in configs:
        rate = qa_rate = target
        if args.match_gate and name != "gate" and target is not None:  # the gate's rate on each task
            gate_row = results[f"gate@{target}"]
            rate = round(gate_row["eviction_rate"], 4)
            qa_rate = rate if math.isnan(gate_row["qa_eviction_rate"]) else round(gate_row["qa_eviction_rate"], 4)
        policy = policy_for(name, rate, key, gate_path, args.gate_window)
        qa_policy = policy if qa_rate == rate else policy_for(name, qa_rate, key, gate_path)
        row = measure(name, rate, policy, qa_policy)
        row["matched_to_gate"] = rate != target
        report("full" if target is None else f"{name}@{target}", row)

    if not args.no_threshold:  # the gate at its own threshold (no budget): the eviction rate it chooses
        policy = AttentionGate(weights=load_gates(gate_path, key))  # threshold 0.5, no target
        report("gate@threshold", measure("gate", None, policy, policy), label="gate@thr 0.5")

    speeds = {} if args.no_speed else speed_table(lm, stream, args, gate_path, key)

    uio = None
    if not args.no_uio:
        uio = uio_row(lm, seqs, args, gate_path, key)
        print(f"\nwith {uio['memory_slots']} memory slots ({uio['adapter']} adapter): full ppl {uio['full_ppl']:.2f}, "
              f"gate@0.5 ppl {uio['gate_ppl']:.2f} ({uio['gate_eviction_rate'] * 100:.1f} % evicted), "
              f"prefix intact: {uio['prefix_intact']}")

    out = {"model": key, "device": str(lm.device), "dtype": str(lm.dtype), "args": {k: str(v) for k, v in
                                                                                      vars(args).items()},
           "gate_weights": str(gate_path.relative_to(ROOT) if gate_path.is_relative_to(ROOT) else gate_path),
           "quality": results, "speed": {"context": args.speed_len, "new_tokens": args.speed_new,
                                         "target_eviction": 0.5, "policies": speeds},
           "uio": uio, "wall_s": round(time.perf_counter() - t0, 1)}
    path = RESULTS_DIR / f"eval_cache_{key}{'_' + args.tag if args.tag else ''}.json"
    write_json(path, out)
    print(f"\nwrote {path.relative_to(ROOT)}")
    name = f"cache_policies{'' if key == 'smollm2' else '_' + key}{'_' + args.tag if args.tag else ''}.png"
    plot(results, ROOT / "docs" / name, key, rates)
    print(f"and docs/{name}")


@torch.inference_mode()
def uio_row(lm, seqs, args, gate_path: Path, key: str) -> dict:
    """Held-out text read after a memory prefix; the gate prunes only the recent part."""
    from uio.adapter import UIOAdapter
    from uio.decoder import build_cache
    from uio.encoder import Encoder
    from uio.memory import MemoryConfig

    if args.adapter:
        adapter, label = UIOAdapter.load(lm, args.adapter), str(args.adapter)
    else:  # LoRA at its zero init: memories are the base model's own K/V at the slots (random would be noise)
        adapter, label = UIOAdapter(lm, MemoryConfig(segment_len=256, num_mem=32)), "untrained (LoRA at init)"
    encoder = Encoder(adapter)
    ids = seqs[0]
    memory = encoder.compress([seqs[-1][0].tolist()], segment_ids=[0], token_spans=[(0, args.len)])
    row = {"adapter": label, "memory_slots": memory.num_slots}
    for name, rate in (("full", None), ("gate", 0.5)):
        cache, m = build_cache(lm, [memory], adapter.fingerprint)
        before = cache.layers[0].keys[:, :, :m].clone()
        policy = policy_for(name, rate, key, gate_path)
        pc_nll, ev, _ = perplexity(lm, policy, ids, args.chunk, args.skip, cache=cache, prefix_len=m)
        row[f"{name}_ppl"] = math.exp(pc_nll)
        row[f"{name}_eviction_rate"] = ev
        if name == "gate":
            row["prefix_intact"] = bool(torch.equal(cache.layers[0].keys[:, :, :m], before))
    return row


if __name__ == "__main__":
    main()
