"""Does the answering model pick the gold page among retrieval's first passages? (query likelihood, UPR-style)

    python bench/rerank_probe.py --model qwen --k 5

For each question of bench/qa/realdocs.json (batch 1 by default), over the library of
bench/eval_retrieval.py (the Debian manuals, ingested uncompressed): retrieval's first k passages
(one per page), each scored by the model's log-probability of the question after the passage.
Prints how often the gold page is first: retrieval's order, the model's, and fusions of both.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.common import RESULTS_DIR, ROOT
from bench.eval_retrieval import build
from bench.qa import realdocs

PROMPT = "{passage}\n\nA question that the text above answers:\n"


@torch.inference_mode()
def question_logprob(lm, passage: str, question: str) -> tuple[float, int]:
    """(summed log-probability of the question's tokens after the passage, number of question tokens)."""
    tok = lm.tokenizer
    ctx = tok(PROMPT.format(passage=passage), add_special_tokens=False)["input_ids"]
    q = tok(question, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + q], device=lm.device)
    logits = lm.model(ids).logits[0, len(ctx) - 1:-1].float()
    lp = torch.log_softmax(logits, -1).gather(1, ids[0, len(ctx):, None]).sum().item()
    return lp, len(q)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batches", default="1")
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "eval_retrieval")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "rerank_probe.json")
    args = ap.parse_args()
    tome, docs = build(args.data, args.model, copy=False)
    lm = tome.models.lm
    qset = realdocs.load(batches=realdocs.parse_batches(args.batches))
    rows = []
    for q in qset["questions"]:
        chosen = [docs[x] for x in q["docs"]]
        gold = {(docs[g["doc"]].id, g["page"]) for g in q["gold"]}
        ranking = tome.retriever.rank(chosen, q["question"])
        seen, cands = set(), []
        for h in ranking.hits:
            if (h.document_id, h.page_start) not in seen:
                seen.add((h.document_id, h.page_start))
                cands.append(h)
            if len(cands) == args.k:
                break
        t = time.perf_counter()
        scores = [question_logprob(lm, h.text, q["question"])[0] for h in cands]
        dt = time.perf_counter() - t
        golds = [(h.document_id, h.page_start) in gold for h in cands]
        rows.append({"id": q["id"], "kind": q["kind"], "gold": golds, "lm": scores, "s": dt,
                     "tokens": [len(lm.tokenizer(h.text)["input_ids"]) for h in cands]})
        print(q["id"], "".join("G" if g else "." for g in golds), [round(s, 1) for s in scores], f"{dt:.2f}s",
              flush=True)
    args.out.write_text(json.dumps({"model": args.model, "k": args.k, "rows": rows}, indent=1))
    report(rows)


def report(rows) -> None:
    single = [r for r in rows if r["kind"] == "single"]

    def first(order_of):
        return sum(r["gold"][order_of(r)[0]] for r in single if r["gold"])

    n = len(single)
    ret = lambda r: list(range(len(r["gold"])))
    lm = lambda r: sorted(range(len(r["gold"])), key=lambda i: -r["lm"][i])

    def rrf(w):
        def order(r):
            lr = {i: k for k, i in enumerate(lm(r))}
            return sorted(range(len(r["gold"])), key=lambda i: -(1 / (1 + i) + w / (1 + lr[i])))
        return order

    print(f"single-book questions: {n}; gold among the k: {sum(any(r['gold']) for r in single)}")
    print(f"gold first: retrieval {first(ret)}, model {first(lm)}, "
          + ", ".join(f"rrf w={w} {first(rrf(w))}" for w in (0.5, 1, 2)))
    print(f"model seconds per question: {sum(r['s'] for r in rows) / len(rows):.2f}")


if __name__ == "__main__":
    main()
