"""Train the kvzip-fast scorer (``uio.compress.scorer``) against KVzip's scores, on a CPU.

    python -m uio.train.scorer --model smollm2 --segments 240 --heldout 24 --steps 3000
    python -m uio.train.scorer --model smollm2 --resume      # continue a stopped run exactly
    python -m uio.train.scorer --model qwen --init uio/weights/scorer-qwen.safetensors ...   # fine-tune

Two phases, both resumable:

1. targets: segments of ``--segment-len`` tokens from the training corpus (data/corpus/train.jsonl, built by
   data/build_corpus.py; held-out segments from heldout.jsonl, documents never trained on). Per segment,
   ``KVzipCompressor.score`` (a prefill + the repeat pass, ~3 forwards) and the hidden states entering each
   layer's attention during the prefill, cached on disk (``--cache``, one file per segment: a rerun skips
   finished ones). Training segments keep a random ``--keep-tokens`` subset of their tokens' hidden states
   (labels are computed on the whole segment first); held-out segments keep all. Also per layer the
   ``cross_features`` of the prefill's queries and keys (a few floats per KV head and token, so scorers with
   and without them train from one cache). ``--passkey N`` adds N synthetic training segments: a 5-digit key
   in repeated filler (``bench.qa.passkey``, seeds 100000 + i, never the eval's), what the pass-key eval asks.
2. train: the local objective per layer (no backward through the base model): BCE on "in KVzip's kept set"
   at 8x and at 32x, plus a listwise term (cross-entropy between the softmax of the scores and of KVzip's log
   scores, per head). Checkpoints every ``--ckpt-every`` steps (weights, optimiser, step: the segment order
   is a function of the seed and the step, so a resume is exact). The held-out agreement (KVzip's kept set
   that the scorer keeps too, at 8x and 32x, layers and heads averaged) is logged every ``--eval-every``.

Log (JSONL, appended): bench/results/scorer_train_<model>.jsonl: per target segment its CPU seconds and
tokens, per logged step the losses, cumulative CPU seconds and tokens, and the held-out agreement.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from uio.compress.scorer import KVScorer, ScorerConfig, cross_features, scorer_path, topk_agreement

ROOT = Path(__file__).resolve().parents[2]
RATIOS = (8, 32)


# -- segments ----------------------------------------------------------------------------------------
def corpus_segments(path: Path, tokenizer, count: int, segment_len: int, seed: int) -> list[list[int]]:
    """``count`` segments of exactly ``segment_len`` tokens, at most 2 per document, from a seeded shuffle.

    Documents are taken in a seeded order; each gives segments at seeded offsets (a book's middle as well as
    its start), so the set depends only on the file and the seed.
    """
    docs = [json.loads(line)["text"] for line in open(path, encoding="utf-8")]
    order = list(range(len(docs)))
    rng = random.Random(f"scorer/{seed}")
    rng.shuffle(order)
    out: list[list[int]] = []
    for i in order:
        ids = tokenizer(docs[i], add_special_tokens=False, verbose=False)["input_ids"]
        fits = len(ids) // segment_len
        if fits == 0:
            continue
        for j in sorted(rng.sample(range(fits), min(2, fits))):
            out.append(ids[j * segment_len:(j + 1) * segment_len])
            if len(out) == count:
                return out
    return out


def passkey_segments(tokenizer, count: int, segment_len: int, seed: int) -> list[list[int]]:
    """``count`` pass-key documents of exactly ``segment_len`` tokens, key at a seeded depth (seeds 100000+)."""
    from bench.qa.passkey import passkey_document

    rng = random.Random(f"scorer-passkey/{seed}")
    out = []
    for i in range(count):
        text, _ = passkey_document(tokenizer, segment_len, rng.random(), seed=100000 + i)
        out.append(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][:segment_len])
    return out


def kept_labels(scores: torch.Tensor, ratio: int, n_sink: int = 4) -> torch.Tensor:
    """(layers, kv, n) 0/1: KVzip's kept set at ``ratio`` (sinks forced, as the compressor selects)."""
    n = scores.shape[-1]
    k = max(1, math.ceil(n / ratio))
    s = scores.float().clone()
    s[..., :min(n_sink, k)] = float("inf")
    return torch.zeros_like(s).scatter_(-1, s.topk(k, -1).indices, 1.0)


@torch.no_grad()
def make_target(lm, tokens: list[int], keep_tokens: int | None, seed: int, stride: int = 8) -> dict:
    """KVzip's scores of one segment and the hidden states entering each layer's attention in its prefill."""
    from uio.adapter import body
    from uio.compress.kvzip import KVzipCompressor
    from uio.gate import attention_inputs

    rotary = body(lm).rotary_emb

    class Observing(KVzipCompressor):  # KVzip's prefill, also reading its queries and keys
        def observe(self, module, query, keys):
            return cross_features(module, query, keys, rotary, stride)

    kv = Observing(ratio=8)
    with attention_inputs(lm.model) as seen:
        pre = kv.prefill(lm, tokens)
    hidden = torch.stack([seen[i][0] for i in range(len(seen))])  # (layers, n, D)
    cross = torch.stack(pre.observed).float()  # (layers, kv, n, CROSS_FEATURES)
    with torch.inference_mode():
        scores = kv.score(lm, pre).float()  # (layers, kv, n)
    n = len(tokens)
    idx = torch.arange(n)
    if keep_tokens and keep_tokens < n:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:keep_tokens].sort().values
    store = hidden.dtype if hidden.dtype in (torch.bfloat16, torch.float16) else torch.float16
    return {"ids": torch.tensor(tokens), "index": idx, "hidden": hidden[:, idx].to(store).clone(),
            "cross": cross[:, :, idx].clone(), "cross_stride": stride,
            "log_scores": scores.clamp_min(1e-8).log()[..., idx].clone(),
            "labels": {r: kept_labels(scores, r)[..., idx].to(torch.bool).clone() for r in RATIOS},
            "full_log_scores": scores.clamp_min(1e-8).log().to(torch.float16)}


def build_targets(lm, segments: list[list[int]], folder: Path, keep_tokens: int | None, log, split: str,
                  stride: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, seg in enumerate(segments):
        path = folder / f"{i:05d}.pt"
        if path.is_file():
            continue
        c0, w0 = time.process_time(), time.perf_counter()
        rec = make_target(lm, seg, keep_tokens, seed=i, stride=stride)
        tmp = path.with_suffix(".tmp")
        torch.save(rec, tmp)
        tmp.replace(path)
        log({"phase": "targets", "split": split, "segment": i, "tokens": len(seg),
             "cpu_s": round(time.process_time() - c0, 2), "wall_s": round(time.perf_counter() - w0, 2)})


# -- the objective -----------------------------------------------------------------------------------
def cross_of(scorer: KVScorer, rec: dict, layer: int) -> torch.Tensor | None:
    """The record's cross features of ``layer`` that ``scorer`` reads (None without cross)."""
    cfg = scorer.config
    if not cfg.cross:
        return None
    if cfg.cross_stride and rec.get("cross_stride") != cfg.cross_stride:
        raise ValueError(f"targets made with cross stride {rec.get('cross_stride')}, scorer wants {cfg.cross_stride}")
    return rec["cross"][layer][..., :cfg.cross_dim]


def segment_loss(scorer: KVScorer, rec: dict, listwise: float, temperature: float) -> tuple[torch.Tensor, dict]:
    """Mean over layers of BCE(8x) + BCE(32x) + ``listwise`` * CE(softmax(target / T), softmax(pred))."""
    idx = rec["index"]
    feats = scorer.features(rec["ids"].shape[0], rec["ids"], idx)
    sink = idx >= 4  # sinks are forced in at inference: nothing to learn there
    parts = {"bce8": [], "bce32": [], "list": []}
    for layer, mod in enumerate(scorer.layers):
        pred = mod(rec["hidden"][layer], feats, cross_of(scorer, rec, layer))[:, sink]  # (kv, m), the stored tokens at their true positions
        for r in RATIOS:
            y = rec["labels"][r][layer][:, sink].float()
            pos_w = (y.numel() - y.sum()) / y.sum().clamp_min(1)  # balance: the kept set is 1/r of the tokens
            parts[f"bce{r}"].append(F.binary_cross_entropy_with_logits(pred, y, pos_weight=pos_w.sqrt()))
        t = rec["log_scores"][layer][:, sink].float() / temperature
        parts["list"].append(-(t.softmax(-1) * pred.log_softmax(-1)).sum(-1).mean()
                             + (t.softmax(-1) * t.log_softmax(-1)).sum(-1).mean())  # KL, 0 at a perfect match
    out = {k: torch.stack(v).mean() for k, v in parts.items()}
    loss = out["bce8"] + out["bce32"] + listwise * out["list"]
    return loss, {k: round(float(v.detach()), 4) for k, v in out.items()}


@torch.no_grad()
def heldout_agreement(scorer: KVScorer, files: list[Path]) -> dict:
    """Per ratio, the mean over held-out segments of ``topk_agreement`` (layers and heads averaged)."""
    out = {r: [] for r in RATIOS}
    for f in files:
        rec = torch.load(f, weights_only=False)
        feats = scorer.features(rec["ids"].shape[0], rec["ids"])
        pred = torch.stack([scorer(layer, rec["hidden"][layer], feats=feats,
                                   cross=cross_of(scorer, rec, layer))
                            for layer in range(len(scorer.layers))])
        for r in RATIOS:
            out[r].append(topk_agreement(pred, rec["full_log_scores"].float(), r))
    return {f"agree{r}": round(sum(v) / max(len(v), 1), 4) for r, v in out.items()}


def feature_stats(scorer: KVScorer, files: list[Path]) -> None:
    """Per layer, the mean and inverse std of each hidden feature over ``files`` (into the scorer's buffers)."""
    sums = None
    for f in files:
        h = torch.load(f, weights_only=False)["hidden"].float()  # (layers, m, D)
        s = torch.stack([h.sum(1), (h * h).sum(1)]), h.shape[1]
        sums = s if sums is None else (sums[0] + s[0], sums[1] + s[1])
    mean = sums[0][0] / sums[1]
    var = (sums[0][1] / sums[1] - mean ** 2).clamp_min(1e-6)
    for layer, mod in enumerate(scorer.layers):
        mod.mean.copy_(mean[layer])
        mod.inv_std.copy_(var[layer].rsqrt())
    if not scorer.config.cross:
        return
    c = torch.cat([torch.load(f, weights_only=False)["cross"].float() for f in files], 2)[..., :scorer.config.cross_dim]
    for layer, mod in enumerate(scorer.layers):
        mod.cross_mean.copy_(c[layer].mean(1))
        mod.cross_inv_std.copy_(c[layer].std(1).clamp_min(1e-3).reciprocal())


# -- cost ----------------------------------------------------------------------------------------------
@torch.no_grad()
def measure_speed(lm, segments: list[list[int]], rounds: int = 2) -> dict:
    """Tokens per CPU second (one thread) of a plain forward (body only, and with logits), kvzip-fast and kvzip.

    Interleaved per segment and round so a busy machine slows every method alike; CPU time, not wall time,
    because the machine is shared.
    """
    from uio.compress import make_compressor

    fast, kv = make_compressor("kvzip-fast", 8), make_compressor("kvzip", 8)
    runs = {
        "plain_forward": lambda ids: lm.model.model(input_ids=torch.tensor([ids]), use_cache=True),
        "plain_forward_logits": lambda ids: lm.model(input_ids=torch.tensor([ids]), use_cache=True),
        "kvzip-fast": lambda ids: fast.compress(lm, [ids]),
        "kvzip": lambda ids: kv.compress(lm, [ids]),
    }
    for f in runs.values():  # warm-up (and the scorer's load)
        f(segments[0][:64])
    cpu = {k: 0.0 for k in runs}
    wall = {k: 0.0 for k in runs}
    tokens = 0
    for _ in range(rounds):
        for ids in segments:
            tokens += len(ids)
            for k, f in runs.items():
                c, w = time.process_time(), time.perf_counter()
                f(ids)
                cpu[k] += time.process_time() - c
                wall[k] += time.perf_counter() - w
    out = {k: {"tok_per_cpu_s": round(tokens / cpu[k], 1), "tok_per_wall_s": round(tokens / wall[k], 1)}
           for k in runs}
    for k in ("kvzip-fast", "kvzip"):
        for ref in ("plain_forward", "plain_forward_logits"):
            out[k][f"vs_{ref}"] = round(cpu[ref] / cpu[k], 3)
    return {"tokens": tokens, "segments": len(segments), "rounds": rounds, "threads": torch.get_num_threads(),
            "dtype": str(lm.dtype), "methods": out}


# -- the command ---------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m uio.train.scorer", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus",
                    help="folder with train.jsonl and heldout.jsonl (data/build_corpus.py)")
    ap.add_argument("--segments", type=int, default=240, help="training segments (targets cost ~3 forwards each)")
    ap.add_argument("--heldout", type=int, default=24, help="held-out segments for the agreement figure")
    ap.add_argument("--segment-len", type=int, default=1024)
    ap.add_argument("--keep-tokens", type=int, default=512, help="tokens of a training segment kept on disk")
    ap.add_argument("--rank", type=int, default=32, help="hidden units per KV head")
    ap.add_argument("--no-repeats", dest="repeats", action="store_false",
                    help="leave out the token and bigram count features (uio.compress.scorer.repeat_counts)")
    ap.add_argument("--cross", action="store_true", help="per-KV-head features from the prefill's queries and "
                    "keys (uio.compress.scorer.cross_features)")
    ap.add_argument("--cross-stride", type=int, default=8, help="targets store, and --cross scorers read, the "
                    "normalised induction pair over every this-th key (0: without it; the scorer's costly part)")
    ap.add_argument("--no-cross-norm", dest="cross_norm", action="store_false",
                    help="a --cross scorer without the normalised induction pair (reads the cheap features only)")
    ap.add_argument("--passkey", type=int, default=0, help="synthetic pass-key training segments, added to "
                    "--segments")
    ap.add_argument("--extra-corpus", type=Path, default=None,
                    help="a second corpus folder (train.jsonl, heldout.jsonl; e.g. data/manuals from "
                         "data/build_manuals.py): its segments join the training set, its held-out segments "
                         "get their own agreement figure")
    ap.add_argument("--extra-segments", type=int, default=0, help="training segments from --extra-corpus")
    ap.add_argument("--extra-heldout", type=int, default=0, help="held-out segments from --extra-corpus")
    ap.add_argument("--evaluate", type=Path, default=None, help="only report this weights file's held-out "
                    "agreement (the targets must exist)")
    ap.add_argument("--init", type=Path, default=None, help="start from this weights file (same model; its "
                    "config and feature statistics are kept) instead of a seeded init: a fine-tune")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--listwise", type=float, default=1.0, help="weight of the listwise term")
    ap.add_argument("--temperature", type=float, default=0.5, help="of the target softmax over log scores")
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--stop-after", type=int, default=None, help="stop at this step (the schedule keeps --steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="targets (default runs/scorer-targets/<model>)")
    ap.add_argument("--run-dir", type=Path, default=None, help="checkpoint (default runs/scorer-<model>)")
    ap.add_argument("--out", type=Path, default=None, help="default uio/weights/scorer-<model>.safetensors")
    ap.add_argument("--log", type=Path, default=None, help="default bench/results/scorer_train_<model>.jsonl")
    ap.add_argument("--resume", action="store_true", help="continue from the run dir's checkpoint")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed", type=int, default=0, help="only measure: tokens/s of kvzip-fast, kvzip and a plain "
                    "forward over this many held-out segments (bench/results/scorer_speed_<model>.json)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bench.common import load_model
    from uio.model import embedded_key

    args = parse(argv)
    torch.set_num_threads(args.threads)
    key = embedded_key(args.model) or args.model
    cache = args.cache or ROOT / "runs" / "scorer-targets" / key
    run_dir = args.run_dir or ROOT / "runs" / f"scorer-{key}"
    out = args.out or scorer_path(key)
    log_path = args.log or ROOT / "bench" / "results" / f"scorer_train_{key}.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    logf = open(log_path, "a")

    def log(rec: dict) -> None:
        rec = {"model": key, "time": time.strftime("%H:%M:%S"), **rec}
        logf.write(json.dumps(rec) + "\n")
        logf.flush()
        print(json.dumps(rec), flush=True)

    lm = load_model(args.model, threads=args.threads)  # the product's dtype: the scores the product would see
    train_dir, held_dir = cache / "train", cache / "heldout"
    c0 = time.process_time()
    train_segs = corpus_segments(args.corpus / "train.jsonl", lm.tokenizer, args.segments, args.segment_len, args.seed)
    held_segs = corpus_segments(args.corpus / "heldout.jsonl", lm.tokenizer, args.heldout, args.segment_len,
                                args.seed)
    pk_segs = passkey_segments(lm.tokenizer, args.passkey, args.segment_len, args.seed)
    extra = args.extra_corpus.name if args.extra_corpus else ""
    extra_train = extra_held = []
    if extra:
        extra_train = corpus_segments(args.extra_corpus / "train.jsonl", lm.tokenizer, args.extra_segments,
                                      args.segment_len, args.seed)
        extra_held = corpus_segments(args.extra_corpus / "heldout.jsonl", lm.tokenizer, args.extra_heldout,
                                     args.segment_len, args.seed)
    (cache / "segments.json").parent.mkdir(parents=True, exist_ok=True)
    (cache / "segments.json").write_text(json.dumps({
        "corpus": str(args.corpus), "seed": args.seed, "segment_len": args.segment_len,
        "train_sha256": hashlib.sha256(json.dumps(train_segs).encode()).hexdigest(),
        "heldout_sha256": hashlib.sha256(json.dumps(held_segs).encode()).hexdigest(),
        "passkey": len(pk_segs),
        **({"extra_corpus": str(args.extra_corpus),
            "extra_train_sha256": hashlib.sha256(json.dumps(extra_train).encode()).hexdigest(),
            "extra_heldout_sha256": hashlib.sha256(json.dumps(extra_held).encode()).hexdigest()} if extra else {})})
        + "\n")
    if args.speed:
        res = {"model": key, **measure_speed(lm, held_segs[:args.speed])}
        path = ROOT / "bench" / "results" / f"scorer_speed_{key}.json"
        path.write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
        return 0
    build_targets(lm, held_segs, held_dir, None, log, "heldout", args.cross_stride)
    # The extra corpus's targets live in their own folders, named for it: the main cache's files keep their meaning.
    extra_held_files: list[Path] = []
    if extra:
        build_targets(lm, extra_held, cache / f"{extra}-heldout", None, log, f"{extra}-heldout", args.cross_stride)
        extra_held_files = sorted((cache / f"{extra}-heldout").glob("*.pt"))[:len(extra_held)]

    def agreement(scorer: KVScorer) -> dict:
        """Held-out agreement on the corpus, and (prefixed with its name) on the extra corpus."""
        res = heldout_agreement(scorer, held_files)
        if extra_held_files:
            res.update({f"{extra}_{k}": v for k, v in heldout_agreement(scorer, extra_held_files).items()})
        return res

    held_files = sorted(held_dir.glob("*.pt"))[:len(held_segs)]
    if args.evaluate:
        res = agreement(KVScorer.load(args.evaluate, lm))
        log({"phase": "evaluate", "weights": str(args.evaluate), "heldout": len(held_files),
             "extra_heldout": len(extra_held_files), **res})
        return 0
    build_targets(lm, train_segs, train_dir, args.keep_tokens, log, "train", args.cross_stride)
    build_targets(lm, pk_segs, cache / "passkey", args.keep_tokens, log, "passkey", args.cross_stride)
    if extra:
        build_targets(lm, extra_train, cache / f"{extra}-train", args.keep_tokens, log, f"{extra}-train",
                      args.cross_stride)
    train_files = (sorted(train_dir.glob("*.pt"))[:len(train_segs)]
                   + sorted((cache / "passkey").glob("*.pt"))[:len(pk_segs)]
                   + (sorted((cache / f"{extra}-train").glob("*.pt"))[:len(extra_train)] if extra else []))
    log({"phase": "targets-done", "train": len(train_files), "heldout": len(held_files),
         "extra_heldout": len(extra_held_files), "cpu_s": round(time.process_time() - c0, 1)})

    if args.init:  # fine-tune: the file's config (rank, cross features) and feature statistics win over the flags
        scorer = KVScorer.load(args.init, lm)
        log({"phase": "init", "weights": str(args.init), "config": asdict(scorer.config), **agreement(scorer)})
    else:
        scorer = KVScorer(ScorerConfig.for_model(lm, rank=args.rank, repeats=args.repeats, cross=args.cross,
                                                 cross_stride=args.cross_stride if args.cross_norm else 0))
        torch.manual_seed(args.seed)
        scorer = KVScorer(scorer.config)  # seeded init
    opt = torch.optim.AdamW(scorer.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    step, cpu_done, tokens_done = 0, 0.0, 0
    ckpt = run_dir / "checkpoint.pt"
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        scorer.load_state_dict(state["scorer"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, cpu_done, tokens_done = state["step"], state["cpu_s"], state["tokens"]
        log({"phase": "resume", "step": step})
    elif not args.init:
        feature_stats(scorer, random.Random(args.seed).sample(train_files, min(32, len(train_files))))
    scorer.train().requires_grad_(True)
    for mod in scorer.layers:  # the feature statistics are data, not parameters
        mod.mean.requires_grad_(False)
        mod.inv_std.requires_grad_(False)

    def save_ckpt() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"scorer": scorer.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "step": step, "cpu_s": cpu_done, "tokens": tokens_done, "args": vars(args)}, tmp)
        tmp.replace(ckpt)

    stop = min(args.steps, args.stop_after or args.steps)
    t0 = time.process_time()
    recs: list[dict] = []
    while step < stop:
        epoch, pos = divmod(step, len(train_files))
        order = list(range(len(train_files)))
        random.Random(f"{args.seed}/{epoch}").shuffle(order)  # the order is a function of (seed, step)
        rec = torch.load(train_files[order[pos]], weights_only=False)
        loss, parts = segment_loss(scorer, rec, args.listwise, args.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        tokens_done += int(rec["index"].shape[0])
        recs.append(parts)
        if step % 50 == 0 or step == stop:
            cpu = cpu_done + time.process_time() - t0
            mean = {k: round(sum(r[k] for r in recs) / len(recs), 4) for k in recs[0]}
            entry = {"phase": "train", "step": step, "epoch": epoch, "lr": round(sched.get_last_lr()[0], 6),
                     **mean, "cpu_s": round(cpu, 1), "tokens": tokens_done}
            recs = []
            if step % args.eval_every == 0 or step == stop:
                scorer.eval()
                entry.update(agreement(scorer))
                scorer.train()
            log(entry)
        if step % args.ckpt_every == 0 or step == stop:
            cpu_done, t0 = cpu_done + time.process_time() - t0, time.process_time()
            save_ckpt()
    scorer.eval()
    if step >= args.steps:
        final = agreement(scorer)
        scorer.save(out, extra={"trained": {"steps": step, "segments": len(train_files),
                                            "heldout_segments": len(held_files), **final,
                                            **({"init": str(args.init)} if args.init else {}),
                                            "cpu_s_train": round(cpu_done, 1)}})
        log({"phase": "saved", "path": str(out), "bytes": out.stat().st_size, **final})
    else:
        print(f"stopped at step {step}; continue with --resume")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
