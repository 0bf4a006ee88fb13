#!/usr/bin/env python
"""How much of a document survives compression: UIO memories against real baselines, on held-out text.

All measurements in one run, on the same held-out texts for every method
(data/corpus/heldout.jsonl, never trained on):

1. Perplexity of segment t+1 after C segments of context: UIO memories (each
   adapter given, and an untrained adapter of the same shape), no context,
   full context (when it fits the window), truncation to the last K tokens
   and StreamingLLM (4 sink tokens + the last K-4), where K = C*M, the KV
   slots the memories take (equal KV budget).
2. Auto-encoding: teacher-forced next-token accuracy of a segment read from
   its own memory (against no memory).
3. Passkey: a 5-digit key in repetitive filler at depths x lengths, asked
   through the chat template; UIO memories vs the raw text in the prompt.
   Heat map PNG under docs/.
4. Planted-fact QA: a made-up fact planted in real held-out text, asked
   through the chat template; exact match, compressed vs uncompressed.

    .venv/bin/python bench/eval_memory.py --adapter runs/x/smollm2-8x-l64.safetensors [--adapter ...]
        [--model smollm2] [--contexts 4,16] [--docs 8] [--passkey-lengths 256,512,1024]
        [--passkey-depths 0,50,100] [--trials 2] [--qa 8] [--threads 2] [--name cpu]

Sizes are small by default so that it runs on a CPU in minutes; the segment
length is the adapters' (all adapters given must share it). Prints tables
and writes bench/results/eval_memory_<name>.json and docs/passkey_<name>.png.
"""
from __future__ import annotations

import argparse
import math
import random
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import MODELS_DIR, RESULTS_DIR, ROOT, write_json  # noqa: E402

from uio.adapter import UIOAdapter  # noqa: E402
from uio.decoder import cache_from  # noqa: E402
from uio.encoder import Encoder  # noqa: E402
from uio.model import LoadedModel, load_model  # noqa: E402
from uio.train.data import read_jsonl  # noqa: E402
from uio.train.objectives import make_recall_task, plant  # noqa: E402

SINKS = 4
FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")


# -- model plumbing ------------------------------------------------------------------------------

def memories(encoder: Encoder, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Memories (layers, 1, slots, kv, hd) of consecutive l-token segments of ``tokens`` (last may be short)."""
    l = encoder.config.segment_len
    segs = [tokens[i:i + l] for i in range(0, len(tokens), l)]
    ks, vs = [], []
    for i in range(0, len(segs), 8):
        k, v, _ = encoder.forward(segs[i:i + 8])
        ks.append(k)
        vs.append(v)
    return torch.cat(ks, 1)[:, None], torch.cat(vs, 1)[:, None]


def logits_after(lm: LoadedModel, ids: list[int], mem: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> torch.Tensor:
    """Logits (n, vocab) of ``ids`` read after memories (or after nothing)."""
    x = torch.tensor([ids], device=lm.device)
    m = mem[0].shape[2] if mem is not None else 0
    cache = cache_from(lm, *mem) if mem is not None else None
    pos = torch.arange(m, m + len(ids), device=lm.device)
    out = lm.model(input_ids=x, past_key_values=cache, position_ids=pos[None], cache_position=pos,
                   use_cache=cache is not None)
    return out.logits[0].float()


def target_nll(logits: torch.Tensor, target: list[int]) -> tuple[float, int, int]:
    """Summed NLL, correct argmax predictions and count for target[1:], from the logits of its positions."""
    n = len(target)
    pred = logits[-n:-1]
    gold = torch.tensor(target[1:], device=logits.device)
    return float(F.cross_entropy(pred, gold, reduction="sum")), int((pred.argmax(-1) == gold).sum()), n - 1


def greedy(lm: LoadedModel, prompt: list[int], mem=None, new_tokens: int = 16) -> str:
    """Greedy answer to a chat-templated prompt, after memories or not."""
    m = mem[0].shape[2] if mem is not None else 0
    cache = cache_from(lm, *mem) if mem is not None else None
    ids = torch.tensor([prompt], device=lm.device)
    pos = torch.arange(m, m + len(prompt), device=lm.device)
    out_ids = []
    for _ in range(new_tokens):
        out = lm.model(input_ids=ids, past_key_values=cache, position_ids=pos[None], cache_position=pos,
                       use_cache=True)
        cache = out.past_key_values
        nxt = int(out.logits[0, -1].argmax())
        if nxt == lm.tokenizer.eos_token_id:
            break
        out_ids.append(nxt)
        ids = torch.tensor([[nxt]], device=lm.device)
        pos = pos[-1:] + 1
    return lm.tokenizer.decode(out_ids)


def chat(lm: LoadedModel, text: str) -> list[int]:
    msgs = [{"role": "user", "content": text}]
    return list(lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])


# -- the four measurements -----------------------------------------------------------------------

def perplexity(lm, methods: dict[str, Encoder], docs: list[list[int]], contexts: list[int], l: int) -> dict:
    """Per context length C (segments): mean NLL and perplexity of segment C+1 for every method."""
    out = {}
    for c in contexts:
        chains = [d[:(c + 1) * l] for d in docs if len(d) >= (c + 1) * l]
        if not chains:
            continue
        sums: dict[str, list[float]] = {}
        for chain in chains:
            ctx, target = chain[:c * l], chain[c * l:]

            def add(name: str, logits: torch.Tensor) -> None:
                nll, _, n = target_nll(logits, target)
                s = sums.setdefault(name, [0.0, 0])
                s[0] += nll
                s[1] += n

            budgets = {}
            for name, enc in methods.items():
                mem = memories(enc, ctx)
                budgets[name] = mem[0].shape[2]
                add(name, logits_after(lm, target, mem))
            add("no context", logits_after(lm, target))
            if len(ctx) + len(target) <= lm.window:
                add("full context", logits_after(lm, ctx + target))
            for k in sorted(set(budgets.values()) or {len(ctx)}, reverse=True):  # each ratio's KV budget
                k = max(k, 2 * SINKS)
                add(f"truncation (last {k})", logits_after(lm, ctx[-k:] + target))
                add(f"StreamingLLM ({SINKS}+{k - SINKS})",
                    logits_after(lm, ctx[:SINKS] + ctx[-(k - SINKS):] + target))
        out[c * l] = {"chains": len(chains), "kv_budget": budgets,
                      "nll": {n: s[0] / s[1] for n, s in sums.items()},
                      "ppl": {n: math.exp(s[0] / s[1]) for n, s in sums.items()}}
    return out


def autoencoding(lm, methods: dict[str, Encoder], segments: list[list[int]]) -> dict:
    res = {}
    for name, enc in list(methods.items()) + [("no memory", None)]:
        right = total = 0
        for seg in segments:
            mem = memories(enc, seg) if enc else None
            _, ok, n = target_nll(logits_after(lm, seg, mem), seg)
            right, total = right + ok, total + n
        res[name] = right / total
    return res


def needle_answer(lm, enc: Encoder | None, haystack: list[int], question: str) -> str:
    if enc is None:
        doc = lm.tokenizer.decode(haystack)
        return greedy(lm, chat(lm, doc + "\n\n" + question))
    return greedy(lm, chat(lm, question), memories(enc, haystack))


def passkey(lm, methods: dict[str, Encoder], lengths: list[int], depths: list[int], trials: int,
            rng: random.Random) -> dict:
    tok = lm.tokenizer
    filler = tok(FILLER, add_special_tokens=False)["input_ids"]
    grid: dict[str, dict] = {}
    for length in lengths:
        for depth in depths:
            for t in range(trials):
                key = f"{rng.randrange(10000, 100000)}"
                needle = tok(f" The pass key is {key}. Remember it. {key} is the pass key. ",
                             add_special_tokens=False)["input_ids"]
                body_len = max(0, length - len(needle))
                hay = (filler * (body_len // len(filler) + 1))[:body_len]
                at = round(depth / 100 * body_len)
                hay = hay[:at] + needle + hay[at:]
                question = "What is the pass key?"
                for name, enc in list(methods.items()) + [("raw context", None)]:
                    if enc is None and length + 64 > lm.window:
                        continue
                    answer = needle_answer(lm, enc, hay, question)
                    cell = grid.setdefault(name, {}).setdefault(str(length), {}).setdefault(str(depth), [0, 0])
                    cell[0] += key in re.sub(r"\D", "", answer) or key in answer
                    cell[1] += 1
    return {name: {length: {d: c[0] / c[1] for d, c in row.items()} for length, row in g.items()}
            for name, g in grid.items()}


def planted_qa(lm, methods: dict[str, Encoder], docs: list[list[int]], tokens: int, n: int,
               rng: random.Random) -> dict:
    hits: dict[str, list[int]] = {}
    chains = [d[:tokens] for d in docs if len(d) >= tokens][:n]
    for chain in chains:
        task = make_recall_task(lm.tokenizer, rng)
        text = plant(chain, task.fact_ids, rng)
        code = re.search(r"\d{5}", lm.tokenizer.decode(task.fact_ids)).group(0)
        question = lm.tokenizer.decode(task.prompt_ids)
        q = re.search(r"What is the secret code of [^?]*\?", question).group(0)
        for name, enc in list(methods.items()) + [("uncompressed", None)]:
            answer = needle_answer(lm, enc, text, q)
            h = hits.setdefault(name, [0, 0])
            h[0] += code in answer
            h[1] += 1
    return {"documents": len(chains), "tokens": tokens, "exact_match": {k: v[0] / v[1] for k, v in hits.items()}}


# -- output ----------------------------------------------------------------------------------

def heat_map(grids: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(grids)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        g = grids[name]
        lengths = sorted(g, key=int)
        depths = sorted({d for row in g.values() for d in row}, key=int)
        data = [[g[length].get(d, float("nan")) for length in lengths] for d in depths]
        ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), lengths)
        ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths])
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                ax.text(j, i, "" if v != v else f"{v:.0%}", ha="center", va="center", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("tokens")
    axes[0][0].set_ylabel("depth")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--adapter", action="append", default=[], type=Path, help="trained adapter file (repeatable)")
    ap.add_argument("--untrained", default="", help="ratios of untrained adapters to compare (default: those of "
                                                    "the trained ones)")
    ap.add_argument("--segment-len", type=int, default=0, help="without --adapter: l of the untrained adapters")
    ap.add_argument("--heldout", type=Path, default=ROOT / "data" / "corpus" / "heldout.jsonl")
    ap.add_argument("--contexts", default="4,16", help="context lengths in segments")
    ap.add_argument("--docs", type=int, default=8, help="held-out chains per context length")
    ap.add_argument("--ae-segments", type=int, default=16)
    ap.add_argument("--passkey-lengths", default="256,512,1024")
    ap.add_argument("--passkey-depths", default="0,50,100")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--qa", type=int, default=8, help="documents for planted-fact QA")
    ap.add_argument("--qa-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="cpu")
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    lm = load_model(args.model, args.models_dir, args.device, "float32")
    methods: dict[str, Encoder] = {}
    adapters = [UIOAdapter.load(lm, p) for p in args.adapter]
    ls = {a.config.segment_len for a in adapters} or {args.segment_len}
    if len(ls) != 1 or not next(iter(ls)):
        raise SystemExit("adapters must share one segment length (or give --segment-len)")
    l = ls.pop()
    for path, a in zip(args.adapter, adapters):
        methods[f"UIO {a.config.ratio}x ({path.stem})"] = Encoder(a)
    ratios = [int(r) for r in args.untrained.split(",") if r] or sorted({a.config.ratio for a in adapters})
    from uio.memory import MemoryConfig

    for r in ratios:
        ref = next((a.config for a in adapters if a.config.ratio == r), None) or MemoryConfig(l, l // r)
        methods[f"UIO {r}x untrained"] = Encoder(UIOAdapter(lm, ref))
    rng = random.Random(args.seed)
    texts = read_jsonl(args.heldout)
    docs = [lm.tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] for t in texts]
    docs.sort(key=len, reverse=True)  # the longest held-out documents first: they fit every context length
    contexts = [int(c) for c in args.contexts.split(",") if c]
    result: dict = {"model": lm.name, "segment_len": l, "methods": list(methods), "heldout": str(args.heldout),
                    "threads": args.threads, "device": str(lm.device)}
    with torch.inference_mode():
        t = time.time()
        result["perplexity"] = perplexity(lm, methods, docs[:args.docs], contexts, l)
        result["perplexity_seconds"] = round(time.time() - t, 1)
        print(f"\n## Perplexity of the next {l}-token segment (held-out; {lm.name}, {lm.device})")
        for ctx, r in result["perplexity"].items():
            print(f"\ncontext {ctx} tokens, {r['chains']} chains, KV budgets {sorted(set(r['kv_budget'].values()))}")
            for n, p in r["ppl"].items():
                print(f"  {n:42s} {p:9.2f}")
        t = time.time()
        segs = [d[i:i + l] for d in docs[:args.ae_segments] for i in range(0, l * 2, l) if len(d) >= i + l]
        segs = segs[:args.ae_segments]
        result["autoencode_token_accuracy"] = autoencoding(lm, methods, segs)
        result["autoencode_segments"] = len(segs)
        result["autoencode_seconds"] = round(time.time() - t, 1)
        print(f"\n## Auto-encoding: teacher-forced token accuracy of a segment from its own memory ({len(segs)} segments)")
        for n, a in result["autoencode_token_accuracy"].items():
            print(f"  {n:42s} {a:6.3f}")
        t = time.time()
        lengths = [int(x) for x in args.passkey_lengths.split(",") if x]
        depths = [int(x) for x in args.passkey_depths.split(",") if x]
        result["passkey"] = passkey(lm, methods, lengths, depths, args.trials, rng)
        result["passkey_trials"] = args.trials
        result["passkey_seconds"] = round(time.time() - t, 1)
        print(f"\n## Passkey accuracy (depth x length, {args.trials} keys per cell)")
        for n, g in result["passkey"].items():
            print(f"  {n}")
            for length, row in g.items():
                print(f"    {length:>6s} tokens: " + "  ".join(f"{d}%: {v:.0%}" for d, v in row.items()))
        t = time.time()
        result["planted_qa"] = planted_qa(lm, methods, docs, args.qa_tokens, args.qa, rng)
        result["qa_seconds"] = round(time.time() - t, 1)
        print(f"\n## Planted-fact QA, exact match ({result['planted_qa']['documents']} held-out texts of "
              f"{args.qa_tokens} tokens)")
        for n, a in result["planted_qa"]["exact_match"].items():
            print(f"  {n:42s} {a:6.2f}")
    result["seconds"] = round(time.time() - t_start, 1)
    out = RESULTS_DIR / f"eval_memory_{args.name}.json"
    write_json(out, result)
    png = ROOT / "docs" / f"passkey_{args.name}.png"
    heat_map(result["passkey"], png, f"Passkey accuracy, {lm.name}, l={l} (CPU, small sizes)")
    print(f"\nwrote {out.relative_to(ROOT)} and {png.relative_to(ROOT)} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
