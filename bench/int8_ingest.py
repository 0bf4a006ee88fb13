#!/usr/bin/env python
"""CPU ingestion in int8: speed of the fp32 encoder, the int8 encoder and the plain forward with logits,
and what int8 does to the memories (cosine to fp32, passkey / planted-fact QA from int8 vs fp32 memories).

    .venv/bin/python bench/int8_ingest.py --threads 1 [--model smollm2] [--segments 8] [--qa 12]

Speed: the same 1,024-token segments (seeded pseudo-English prose) through
(a) the base model's plain batched forward with logits (what a long-context app
prefills), (b) the encoder in fp32 (no lm_head), (c) the encoder on an int8
copy (``uio/quant.py``), and, where the host has native bf16, the bf16 pair.
Best of 2 each. Quality: every (layer, slot) key and value vector of (c)
against (b); then ``--qa`` one-segment documents with a passkey or a planted
fact, answered greedily by the decoder from fp32 and from int8 memories (exact
match of the answer), with the mean log-likelihood of the right answer given
each set of memories (a finer measure than exact match). Adapter: ``--adapter``,
else the one shipped for the model and ratio, else an untrained one (said so).
Writes bench/results/int8_ingest_<model>.json.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from bench.common import MODELS_DIR, RESULTS_DIR  # noqa: E402

NAMES = ["Orla Venn", "Tam Brody", "Ines Calder", "Rafe Moss", "Cora Lind", "Ned Harrow", "Mira Solt", "Jon Ash"]
PLACES = ["north light", "salt market", "river bridge", "stone harbour", "winter field", "old mill"]


def segments_of(tokenizer, n: int, length: int, seed: int = 0) -> list[list[int]]:
    from bench.books import prose

    rng = random.Random(seed)
    ids = tokenizer(prose(rng, int(n * length * 1.1)), add_special_tokens=False)["input_ids"]
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def qa_items(tokenizer, n: int, length: int, seed: int = 1) -> list[dict]:
    """One-segment documents, each with a passkey or a planted fact in its middle."""
    from bench.books import prose

    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            key = str(rng.randint(10000, 99999))
            fact, question, answer = f"The pass key is {key}. Remember it: {key}.", "What is the pass key?", key
        else:
            who, where = rng.choice(NAMES), rng.choice(PLACES)
            fact, question, answer = (f"The keeper of the {where} is called {who}.", f"Who is the keeper of the {where}?",
                                      who)
        fill = tokenizer(prose(rng, length), add_special_tokens=False)["input_ids"]
        fact_ids = tokenizer(" " + fact + " ", add_special_tokens=False)["input_ids"]
        room = length - len(fact_ids)
        half = room // 2
        out.append({"ids": fill[:half] + fact_ids + fill[half:room], "question": question, "answer": answer})
    return out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def speed_and_memories(lm, adapter, segs: list[list[int]], batch: int, repeats: int = 2
                       ) -> tuple[dict, object, object]:
    import torch

    from uio.encoder import Encoder
    from uio.quant import int8_encoder

    def plain() -> None:
        with torch.inference_mode():
            for s in range(0, len(segs), batch):
                lm.model(input_ids=torch.tensor(segs[s:s + batch]), use_cache=False)

    enc, enc8 = Encoder(adapter, batch_size=batch), int8_encoder(adapter, batch_size=batch)
    n = sum(map(len, segs))
    # interleaved, best of ``repeats``: a shared host's slow spells hit every path alike
    t_plain = t_enc = t_int8 = float("inf")
    for _ in range(repeats):
        t_plain = min(t_plain, timed(plain))
        t_enc = min(t_enc, timed(lambda: enc.compress(segs)))
        t_int8 = min(t_int8, timed(lambda: enc8.compress(segs)))
    row = {"tokens": n, "plain_with_logits_tok_s": n / t_plain, "encoder_tok_s": n / t_enc,
           "int8_encoder_tok_s": n / t_int8, "encoder_vs_plain": t_plain / t_enc, "int8_vs_plain": t_plain / t_int8,
           "int8_vs_encoder": t_enc / t_int8}
    return row, enc, enc8


def answer(lm, mem, question: str, max_new: int = 10) -> str:
    from uio.decoder import stream_over_memories
    from retrieval.prompt import build_messages, fit_budget

    gen = stream_over_memories(lm, [mem], build_messages(fit_budget([], 0), question, memory_of=["the document"]),
                               max_new_tokens=max_new)
    return "".join(gen).strip()


def answer_loglik(lm, mem, question: str, answer_text: str) -> float:
    """Mean log-probability of the answer's tokens after the prompt, reading ``mem``."""
    import torch

    from uio.decoder import logits_over_memories
    from retrieval.prompt import build_messages, fit_budget

    tok = lm.tokenizer
    prompt = tok.apply_chat_template(build_messages(fit_budget([], 0), question, memory_of=["the document"]),
                                     add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    ans = tok(answer_text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = logits_over_memories(lm, [mem], torch.tensor([prompt + ans]))[0, len(prompt) - 1:-1].float()
    return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(ans)[:, None]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ratio", type=int, default=8)
    ap.add_argument("--adapter", type=Path)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--qa", type=int, default=12, help="QA documents (half passkey, half planted fact; 0: skip)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per path (best counts)")
    ap.add_argument("--bf16", action="store_true", help="also time the bf16 encoder and forward (native-bf16 hosts)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    import torch

    from uio.adapter import UIOAdapter
    from uio.memory import MemoryConfig
    from uio.model import embedded_key, load_model
    from uio.runtime import cpu_has_fast_bf16, set_threads, tune_allocator
    from uio.shipped import adapter_path

    tune_allocator()
    set_threads(a.threads)
    models = MODELS_DIR
    lm = load_model(a.model, models, "cpu", "float32")
    shipped = adapter_path(embedded_key(a.model), a.ratio)
    path = a.adapter or (shipped if shipped.is_file() else None)
    adapter = UIOAdapter.load(lm, path) if path else UIOAdapter(lm, MemoryConfig(1024, 1024 // a.ratio))
    l = adapter.config.segment_len
    trained = path is not None
    segs = segments_of(lm.tokenizer, a.segments, l)
    speed, enc, enc8 = speed_and_memories(lm, adapter, segs, a.batch, a.repeats)
    print(f"speed fp32: {speed}", flush=True)
    mem, mem8 = enc.compress(segs), enc8.compress(segs)
    cos = {}
    for name in ("keys", "values"):
        x, y = getattr(mem, name).flatten(2), getattr(mem8, name).flatten(2)
        c = torch.nn.functional.cosine_similarity(x, y, dim=-1).flatten()
        cos[name] = {"mean": float(c.mean()), "p05": float(c.quantile(0.05)), "min": float(c.min())}
    rows = []
    for item in qa_items(lm.tokenizer, a.qa, l):
        m32, m8 = enc.compress([item["ids"]]), enc8.compress([item["ids"]])
        r = {"question": item["question"], "answer": item["answer"]}
        for tag, m in (("fp32", m32), ("int8", m8)):
            text = answer(lm, m, item["question"])
            r[f"{tag}_text"], r[f"{tag}_correct"] = text, item["answer"].lower() in text.lower()
            r[f"{tag}_loglik"] = answer_loglik(lm, m, item["question"], item["answer"])
        rows.append(r)
    n_qa = max(1, len(rows))
    qa = {k: sum(r[f"{k}_correct"] for r in rows) / n_qa for k in ("fp32", "int8")}
    ll = {k: sum(r[f"{k}_loglik"] for r in rows) / n_qa for k in ("fp32", "int8")}
    same = sum(r["fp32_text"] == r["int8_text"] for r in rows) / n_qa
    bf16 = None
    if a.bf16 or cpu_has_fast_bf16():
        lm16 = load_model(a.model, models, "cpu", "bfloat16")
        ad16 = UIOAdapter.load(lm16, path) if path else UIOAdapter(lm16, adapter.config)
        if not path:
            ad16.load_state_dict(adapter.state_dict())
        bf16, _, _ = speed_and_memories(lm16, ad16, segs, a.batch, a.repeats)
    print(f"\n{lm.name}, CPU, {torch.get_num_threads()} thread(s), {a.segments} segments of {l} tokens, "
          f"batch {a.batch}, best of {a.repeats}, {adapter.config.ratio}x, adapter {'trained: ' + path.name if trained else 'UNTRAINED'}\n")
    print("| path | tok/s | vs plain forward with logits |\n|---|---|---|")
    print(f"| plain batched forward with logits, fp32 | {speed['plain_with_logits_tok_s']:.0f} | 1.00x |")
    print(f"| encoder fp32 (no lm_head) | {speed['encoder_tok_s']:.0f} | {speed['encoder_vs_plain']:.2f}x |")
    print(f"| encoder int8 (dynamic quantisation) | {speed['int8_encoder_tok_s']:.0f} | {speed['int8_vs_plain']:.2f}x |")
    if bf16:
        print(f"| plain batched forward with logits, bf16 | {bf16['plain_with_logits_tok_s']:.0f} | "
              f"{bf16['plain_with_logits_tok_s'] / speed['plain_with_logits_tok_s']:.2f}x |")
        print(f"| encoder bf16 | {bf16['encoder_tok_s']:.0f} | "
              f"{bf16['encoder_tok_s'] / speed['plain_with_logits_tok_s']:.2f}x (bf16 plain: "
              f"{bf16['encoder_vs_plain']:.2f}x) |")
        print(f"| encoder int8, bf16 model | {bf16['int8_encoder_tok_s']:.0f} | "
              f"{bf16['int8_encoder_tok_s'] / speed['plain_with_logits_tok_s']:.2f}x |")
    print("\n| int8 vs fp32 memories | mean | 5th percentile | min |\n|---|---|---|---|")
    for name in ("keys", "values"):
        print(f"| cosine of {name} | {cos[name]['mean']:.4f} | {cos[name]['p05']:.4f} | {cos[name]['min']:.4f} |")
    if rows:
        print(f"\nQA from memories ({len(rows)} one-segment documents, half passkey, half planted fact): "
              f"fp32 {qa['fp32']:.0%}, int8 {qa['int8']:.0%} exact; same answer text {same:.0%}; "
              f"mean log-likelihood of the right answer fp32 {ll['fp32']:.3f}, int8 {ll['int8']:.3f}")
    out = a.out or RESULTS_DIR / f"int8_ingest_{a.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": lm.name, "threads": torch.get_num_threads(), "segment_len": l,
                               "ratio": adapter.config.ratio, "adapter": path.name if path else "untrained",
                               "speed_fp32_model": speed, "speed_bf16_model": bf16, "cosine": cos,
                               "qa_exact": qa, "qa_answer_loglik": ll, "qa_same_text": same, "qa": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
