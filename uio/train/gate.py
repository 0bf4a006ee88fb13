"""Train Attention-Gates on a frozen base model: LM loss with the gate applied + an eviction-rate loss.

    python -m uio.train.gate --model smollm2 --minutes 14 --threads 2

Only the gate parameters learn. In the forward pass each layer's gate makes a
hard keep/evict decision per token and KV head; an evicted token stays
visible to the queries within ``recent`` tokens of it (it is still in the
recent window then) and disappears for later ones, as at inference. Attention
weights are multiplied by the decisions and renormalised, so the
straight-through gradient of the keep probabilities is finite everywhere.

Text: docstrings of the running Python's standard library (present on every
machine Tome runs on). Modules are split by a hash of their name; the
held-out part (``heldout_texts``) is what bench/eval_cache.py measures on.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import random
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from uio.gate import AttentionGates, GateConfig, attention_inputs, straight_through
from uio.shipped import gate_path

ATTN_NAME = "tome_gated"


@dataclass
class GateRun:
    """Passed through the model's forward as ``tome_gate``: the gates and what they decided per layer."""

    gates: AttentionGates
    train: bool = True
    threshold: float = 0.5
    probs: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, T, kv_heads)
    keep: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, T, kv_heads), 0/1 (+ST grad)


def gated_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Causal attention whose weights are multiplied by the gate's keep decisions (renormalised)."""
    run: GateRun = kwargs["tome_gate"]
    cfg = run.gates.config
    B, Hq, T, _ = query.shape
    groups = Hq // key.shape[1]
    k = key.repeat_interleave(groups, 1)
    v = value.repeat_interleave(groups, 1)
    scores = (query @ k.transpose(-1, -2)).float() * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    s = kwargs.get("query_positions")  # a subset of query rows (the local objective samples some)
    s = (torch.arange(T, device=query.device) if s is None else s)[:, None]
    t = torch.arange(scores.shape[-1], device=query.device)[None]
    causal = t <= s
    forced = (t < cfg.sink) | (s - t < cfg.recent)
    g = run.keep[module.layer_idx].permute(0, 2, 1).repeat_interleave(groups, 1)[:, :, None, :]  # (B,Hq,1,T)
    weight = torch.where(forced, torch.ones_like(g), g)
    scores = scores.masked_fill(~causal, float("-inf"))
    w = (scores - scores.amax(-1, keepdim=True)).exp() * weight
    probs = w / w.sum(-1, keepdim=True)
    out = probs.to(v.dtype) @ v
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, gated_attention)


def _gate_hook(module, args, kwargs):
    run = kwargs.get("tome_gate")
    if isinstance(run, GateRun):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        probs, _ = run.gates.layers[module.layer_idx].step(hidden)
        run.probs[module.layer_idx] = probs
        run.keep[module.layer_idx] = (straight_through(probs, run.threshold) if run.train
                                      else (probs >= run.threshold).to(probs.dtype))
    return None


class GatedModel:
    """The frozen base model with gates applied through the ``tome_gated`` attention (a training view)."""

    def __init__(self, model, gates: AttentionGates):
        self.model, self.gates = model, gates
        self.previous = model.config._attn_implementation
        model.config._attn_implementation = ATTN_NAME
        self.handles = [layer.self_attn.register_forward_pre_hook(_gate_hook, with_kwargs=True)
                        for layer in model.model.layers]

    def __call__(self, input_ids: torch.Tensor, train: bool = True) -> tuple[torch.Tensor, GateRun]:
        run = GateRun(self.gates, train=train)
        out = self.model(input_ids=input_ids, tome_gate=run, use_cache=False)
        return out.logits, run

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.model.config._attn_implementation = self.previous


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))


def eviction(run: GateRun, hard: bool = False) -> torch.Tensor:
    """Mean eviction over layers, heads and the tokens a gate decides on (not sinks, not the last ``recent``)."""
    cfg = run.gates.config
    parts = []
    for layer in sorted(run.probs):
        p = (run.keep if hard else run.probs)[layer]
        parts.append(1.0 - p[:, cfg.sink:p.shape[1] - cfg.recent].float().mean())
    return torch.stack(parts).mean()


def gate_loss(gm: GatedModel, input_ids: torch.Tensor, target: float, weight: float
              ) -> tuple[torch.Tensor, dict]:
    logits, run = gm(input_ids)
    lm = lm_loss(logits, input_ids)
    soft = eviction(run)
    loss = lm + weight * (soft - target) ** 2
    return loss, {"lm": float(lm.detach()), "evict_soft": float(soft.detach()), "evict_hard": float(eviction(run, hard=True).detach())}


@torch.no_grad()
def collect_layer_inputs(model, input_ids: torch.Tensor, dtype: torch.dtype = torch.float16) -> dict[int, tuple]:
    """One plain forward: per layer (its input hidden states, rotated q, k, v, the attention output after o_proj).

    Stored in ``dtype`` so a pool of sequences fits in memory; the local objective reuses them many times.
    """
    import importlib

    with collect_attention_inputs(model) as seen:
        model(input_ids=input_ids, use_cache=False)
    out = {}
    for layer, (attn, hidden, (cos, sin)) in sorted(seen.items()):
        shape = (*hidden.shape[:-1], -1, attn.head_dim)
        q = attn.q_proj(hidden).view(shape).transpose(1, 2)
        k = attn.k_proj(hidden).view(shape).transpose(1, 2)
        v = attn.v_proj(hidden).view(shape).transpose(1, 2)
        apply = importlib.import_module(type(attn).__module__).apply_rotary_pos_emb
        q, k = apply(q, k, cos, sin)
        full = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling,
                                                                enable_gqa=True)
        full = attn.o_proj(full.transpose(1, 2).flatten(2))
        out[layer] = tuple(t.to(dtype) for t in (hidden, q, k, v, full))
    return out


def local_loss(model, gates: AttentionGates, inputs: dict[int, tuple], target: float, weight: float,
               queries: int | None = None) -> tuple[torch.Tensor, dict]:
    """The CPU-affordable objective: per layer, the attention output with the gate applied vs without.

    ``inputs`` come from ``collect_layer_inputs`` (the plain model's forward). Each layer's gate is trained
    to keep what that layer's attention output needs (relative squared error after o_proj), with the same
    straight-through hard decisions and eviction loss as the LM objective. No backward through the base model.
    ``queries``: score that many random query rows (those an eviction can affect) instead of all.
    """
    run = GateRun(gates)
    cfg = gates.config
    T = next(iter(inputs.values()))[0].shape[1]
    rows = torch.arange(cfg.sink + cfg.recent, T)
    if queries is not None and queries < len(rows):
        rows = rows[torch.randperm(len(rows))[:queries].sort().values]
    errs = []
    layers = model.model.layers
    for layer, stored in inputs.items():
        hidden, q, k, v, full = (t.float() for t in stored)
        attn = layers[layer].self_attn
        probs, _ = gates.layers[layer].step(hidden)
        run.probs[layer], run.keep[layer] = probs, straight_through(probs, run.threshold)
        got = attn.o_proj(gated_attention(attn, q[:, :, rows], k, v, None, scaling=attn.scaling, tome_gate=run,
                                          query_positions=rows)[0].flatten(2))
        full = full[:, rows]
        errs.append((got - full).pow(2).mean() / full.pow(2).mean())
    err = torch.stack(errs).mean()
    soft = eviction(run)
    loss = err + weight * (soft - target) ** 2
    return loss, {"attn_err": float(err.detach()), "evict_soft": float(soft.detach()),
                  "evict_hard": float(eviction(run, hard=True).detach())}


def collect_attention_inputs(model):
    """layer -> (attention module, its input hidden states, its rotary cos/sin) during a forward."""
    return attention_inputs(
        model, take=lambda module, hidden, kwargs: (module, hidden, kwargs["position_embeddings"]))


@torch.no_grad()
def calibrate(model, gates: AttentionGates, sequences: list[torch.Tensor], chunk: int = 32) -> list[float]:
    """Quantiles (0..100 %) of the keep probabilities the gate gives on ``sequences`` (training text),
    read with the gate evicting at threshold 0.5, sinks and the newest ``recent`` tokens aside.
    ``threshold_for(e)`` then evicts about e of the tokens the gate decides on."""
    from uio.cache import AttentionGate, PolicyCache

    cfg = gates.config
    probs = []
    for ids in sequences:
        pc = PolicyCache(model, AttentionGate(weights=gates, threshold=0.5))
        for i in range(0, ids.shape[1], chunk):
            pc.forward(ids[:, i:i + chunk])
            pc.evict()
        end = ids.shape[1] - cfg.recent
        probs += [torch.cat(h, 1)[:, cfg.sink:end].flatten() for h in pc.policy.prob_history]
    allp = torch.cat(probs)
    return [float(x) for x in torch.quantile(allp, torch.linspace(0, 1, 101))]


# ---- text --------------------------------------------------------------------------------------------
def _docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
    except (SyntaxError, ValueError):
        return ""
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 200:
                docs.append(doc)
    return "\n\n".join(docs)


def stdlib_texts(heldout: bool = False, min_chars: int = 2000) -> list[tuple[str, str]]:
    """(module, docstrings) of the standard library, the training or the held-out tenth."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel or "/test" in rel or rel.startswith("test") or "idlelib" in rel:
            continue
        is_held = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 10 == 0
        if is_held != heldout:
            continue
        text = _docstrings(path)
        if len(text) >= min_chars:
            out.append((rel, text))
    return out


def heldout_texts(min_chars: int = 2000) -> list[tuple[str, str]]:
    return stdlib_texts(heldout=True, min_chars=min_chars)


def token_stream(tokenizer, texts: list[tuple[str, str]]) -> torch.Tensor:
    ids: list[int] = []
    for _, text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids)


def batches(stream: torch.Tensor, seq_len: int, batch: int, rng: random.Random):
    while True:
        starts = [rng.randrange(0, len(stream) - seq_len) for _ in range(batch)]
        yield torch.stack([stream[s:s + seq_len] for s in starts])


# ---- the command -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    from uio.model import embedded_key, load_model
    from uio.runtime import set_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--models-dir", type=Path, default=Path(".cache/models"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--minutes", type=float, default=14.0, help="stop after this much training time")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--target", type=float, default=0.6, help="mean eviction rate the gates are pulled to")
    ap.add_argument("--evict-weight", type=float, default=10.0)
    ap.add_argument("--objective", choices=("lm", "local"), default="lm",
                    help="lm: LM loss through the gated model (GPU); local: per-layer attention output (CPU)")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=8)
    ap.add_argument("--pool", type=int, default=24, help="local objective: sequences whose layer inputs are reused")
    ap.add_argument("--queries", type=int, default=32, help="local objective: query rows scored per step")
    ap.add_argument("--calibrate", type=int, default=4, help="training sequences for the threshold quantiles")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None,
                    help="start from these gate weights (e.g. fine-tune a local-objective gate with --objective lm)")
    ap.add_argument("--out", type=Path, default=None, help="default uio/weights/gate-<model>.safetensors")
    ap.add_argument("--log", type=Path, default=None, help="default bench/results/gate_train_<model>.jsonl")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    key = embedded_key(args.model) or args.model
    out = args.out or gate_path(key)
    log_path = args.log or Path("bench/results") / f"gate_train_{key}.jsonl"
    lm = load_model(args.model, args.models_dir, device=args.device, dtype="float32")
    if args.init:
        gates = AttentionGates.load(args.init, base_model=key, device=lm.device).requires_grad_(True).train()
    else:
        gates = AttentionGates(GateConfig.for_model(lm.model, base_model=key, heads=args.heads,
                                                    head_dim=args.head_dim)).to(lm.device)
    gm = GatedModel(lm.model, gates)
    stream = token_stream(lm.tokenizer, stdlib_texts())
    data = batches(stream, args.seq_len, args.batch, random.Random(args.seed))
    opt = torch.optim.AdamW(gates.parameters(), lr=args.lr, weight_decay=0.0)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"{len(stream)} training tokens; {sum(p.numel() for p in gates.parameters())} gate parameters")
    pool = []
    if args.objective == "local":
        gm.close()  # collected from the plain model
        pool = [collect_layer_inputs(lm.model, next(data)[:1].to(lm.device)) for _ in range(args.pool)]
        gm = GatedModel(lm.model, gates)
        print(f"collected the layer inputs of {len(pool)} sequences", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        for step in range(1, args.steps + 1):
            ids = next(data).to(lm.device)
            if args.objective == "lm":
                loss, rec = gate_loss(gm, ids, args.target, args.evict_weight)
            else:
                loss, rec = local_loss(lm.model, gates, pool[step % len(pool)], args.target, args.evict_weight,
                                       queries=args.queries)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec.update(step=step, objective=args.objective, loss=float(loss.detach()), elapsed_s=round(time.perf_counter() - start, 1))
            if step % args.eval_every == 1:  # the LM loss of this batch with and without the (hard) gates
                with torch.no_grad():
                    logits, run = gm(ids, train=False)
                    rec["lm_gated"] = float(lm_loss(logits, ids))
                    rec["evict_hard_eval"] = float(eviction(run, hard=True))
                    gm.close()
                    rec["lm_full"] = float(lm_loss(lm.model(input_ids=ids, use_cache=False).logits, ids))
                    gm = GatedModel(lm.model, gates)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
            if time.perf_counter() - start > args.minutes * 60:
                break
    gm.close()
    gates.quantiles = calibrate(lm.model, gates, [next(data)[:1].to(lm.device) for _ in range(args.calibrate)])
    gates.save(out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
