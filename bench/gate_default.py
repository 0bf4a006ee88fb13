#!/usr/bin/env python
"""Should cache_policy="auto" use the gate? TTFT and answers on the default answer path, gate vs full.

Tome's default ask (uncompressed mode) puts the selected passages in the
system prompt. With the full cache ``uio.generate.stream`` answers with one
prefill; under an evicting policy it prefills in chunks of
``uio.generate.PREFILL_CHUNK`` tokens (32 before session 4) with eviction
after each. This bench builds that prompt with
``retrieval.prompt.build_messages`` around a held-out passage with a made-up fact
planted in its first fifth, at two lengths (``--long``, the default
context_budget, and ``--short``), and answers it three ways, interleaved:

- ``full``: ``FullCache``, what auto gives a model without a gate;
- ``gate``: the shipped gate at ``--eviction``;
- ``chunked-full``: ``ChunkedFullCache`` (the full cache through the policy
  path), to split the chunked prefill's cost from the gate's own.

Reports TTFT ratios to full (same run), QA hits and whether the gate's answer
equals full's. Writes bench/results/gate_default_<model>.json.

    .venv/bin/python bench/gate_default.py --model qwen --items 3 --threads 2
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.common import MODELS_DIR, RESULTS_DIR, ROOT  # noqa: E402

from uio.cache import ChunkedFullCache, FullCache, resolve_policy  # noqa: E402
from uio.generate import PREFILL_CHUNK, stream  # noqa: E402
from uio.model import embedded_key, load_model  # noqa: E402
from retrieval.prompt import Passage, Selection, build_messages  # noqa: E402
from uio.runtime import set_threads  # noqa: E402
from uio.train.gate import heldout_texts  # noqa: E402

NAMES = ["Alder", "Brook", "Cedar", "Dune", "Ember", "Fjord", "Grove", "Heath", "Isle", "Juniper"]


@dataclass(frozen=True)
class _Segment:
    text: str
    n_tokens: int
    page_start: int = 1
    page_end: int = 1


def items(tokenizer, length: int, count: int, seed: int) -> list[dict]:
    """Prompts as ask() builds them: a held-out passage of ``length`` tokens with a planted fact, a question."""
    rng = random.Random(seed)
    stream: list[int] = []
    for _, text in heldout_texts()[::-1]:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
    out = []
    for _ in range(count):
        start = rng.randrange(0, len(stream) - length)
        passage = tokenizer.decode(stream[start:start + length])
        name, code = rng.choice(NAMES), str(rng.randrange(1000, 10000))
        cut = passage.rfind(" ", 0, len(passage) // 5)
        text = passage[:cut] + f" The secret code of the {name} vault is {code}. " + passage[cut:]
        selection = Selection([Passage("Held-out notes", _Segment(text, length))], [])
        question = f"What is the secret code of the {name} vault? Answer with the number only."
        out.append({"messages": build_messages(selection, question), "answer": code})
    return out


def answer(lm, how: str, messages: list[dict], new_tokens: int, eviction: float, key: str,
           chunk: int = PREFILL_CHUNK) -> dict:
    policy = (FullCache() if how == "full" else ChunkedFullCache() if how == "chunked-full"
              else resolve_policy("gate", eviction, key))
    gen = stream(lm, messages, policy, max_new_tokens=new_tokens, chunk=chunk)
    text = "".join(gen)
    s = gen.stats
    return {"text": text, "ttft_s": s.ttft_s, "prompt_tokens": s.prompt_tokens, "eviction_rate": s.eviction_rate,
            "decode_tok_s": s.decode_tok_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--long", type=int, default=3000, help="passage tokens (the default context_budget is 3072)")
    ap.add_argument("--short", type=int, default=300)
    ap.add_argument("--items", type=int, default=3, help="prompts per length")
    ap.add_argument("--new", type=int, default=16, help="new tokens per answer")
    ap.add_argument("--eviction", type=float, default=0.6, help="the default cache_eviction")
    ap.add_argument("--chunk", type=int, default=PREFILL_CHUNK, help="prefill chunk under a policy")
    ap.add_argument("--tag", default="", help="suffix of the JSON name")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    set_threads(args.threads)
    key = embedded_key(args.model) or args.model
    lm = load_model(args.model, args.models_dir)
    ways = ("full", "gate", "chunked-full")
    answer(lm, "gate", items(lm.tokenizer, 64, 1, 99)[0]["messages"], 2, args.eviction, key)  # warm-up
    rows = []
    print(f"{'length':>7}{'item':>5}{'way':>14}{'prompt':>8}{'TTFT s':>8}{'x full':>8}{'evict %':>9}  ok  same")
    for length in (args.short, args.long):
        for k, item in enumerate(items(lm.tokenizer, length, args.items, seed=length)):
            got = {how: answer(lm, how, item["messages"], args.new, args.eviction, key, args.chunk) for how in ways}
            for how in ways:
                r = got[how] | {"length": length, "item": k, "way": how, "ok": item["answer"] in got[how]["text"],
                                "same_as_full": got[how]["text"] == got["full"]["text"],
                                "ttft_vs_full": got[how]["ttft_s"] / got["full"]["ttft_s"]}
                rows.append(r)
                print(f"{length:>7}{k:>5}{how:>14}{r['prompt_tokens']:>8}{r['ttft_s']:>8.2f}{r['ttft_vs_full']:>8.2f}"
                      f"{100 * r['eviction_rate']:>9.1f}  {'y' if r['ok'] else 'n':>2}"
                      f"  {'y' if r['same_as_full'] else 'n':>4}", flush=True)
    summary = {}
    for length in (args.short, args.long):
        for how in ways:
            sel = [r for r in rows if r["length"] == length and r["way"] == how]
            summary[f"{how}@{length}"] = {
                "ttft_s_median": statistics.median(r["ttft_s"] for r in sel),
                "ttft_vs_full_median": statistics.median(r["ttft_vs_full"] for r in sel),
                "qa_hits": sum(r["ok"] for r in sel), "items": len(sel),
                "same_as_full": sum(r["same_as_full"] for r in sel),
                "eviction_rate": statistics.mean(r["eviction_rate"] for r in sel)}
    print(f"\n{'way @ length':<22}{'TTFT s (median)':>16}{'x full':>8}{'QA':>6}{'= full':>8}{'evict %':>9}")
    for tag, s in summary.items():
        print(f"{tag:<22}{s['ttft_s_median']:>16.2f}{s['ttft_vs_full_median']:>8.2f}{s['qa_hits']:>4}/{s['items']}"
              f"{s['same_as_full']:>6}/{s['items']}{100 * s['eviction_rate']:>9.1f}")
    path = RESULTS_DIR / f"gate_default_{key}{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps({"model": key, "device": str(lm.device), "dtype": str(lm.dtype),
                                "args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                "rows": rows}, indent=2))
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
