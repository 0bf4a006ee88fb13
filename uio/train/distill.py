"""Self-distillation of the memory model (issue 20): the frozen model with the raw segment teaches the
same model reading memories instead.

One step over a (B, T, l) chain, for each segment t (reservoir TBPTT as in ``chain.py``):

- ``Encoder.ordinary``: the segment through the frozen model once, no gradient: its pre-RoPE keys and
  values. They are both what the memory tokens read and the teacher's context.
- ``Encoder.memories``: the M <mem> tokens -> memory keys and values (the only part with a graph).
- Teacher: the frozen model reading the probe (the next ``c`` tokens of the text, or a question and its
  answer about the segment) after [memories of segments < t, detached | the segment's own keys and
  values]; its logits and, per layer, its rotated queries, the probe's own keys/values and its attention
  output. For t = 0 this is exactly the raw segment in context.
- Student: the frozen model reading the same probe after [memories of segments <= t].

Losses (weights in ``DistillConfig``):

- ``kl``: KL(teacher || student) of the next-token distributions on the probe (on a QA probe: on the
  answer tokens);
- ``attention``: per layer, the teacher's queries attend to the student's memories (+ the probe's own
  keys) and the output is compared with the teacher's attention output (relative squared error), for
  ``attention_queries`` evenly spaced probe positions. Local: its gradient reaches each layer's memory
  directly, without a backward through the model;
- ``autoencode``: KL on a random span of ``autoencode_len`` tokens (l/16) of the segment, re-read after its own
  memory (teacher: after the segment's own keys and values);
- ``answer_ce``: cross-entropy on QA answers (the teacher can be wrong; the text is not).

Every term is zero when the memories *are* the segment's keys and values (tested).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from uio.compress.base import causal_offset_mask
from uio.decoder import cache_from, rotate_keys
from uio.encoder import Encoder, Ordinary
from uio.model import LoadedModel
from uio.train.tbptt import ReservoirTBPTT

ATTN_IMPL = "uio_distill"
TERMS = ("kl", "attention", "autoencode", "answer_ce")


@dataclass(frozen=True)
class DistillConfig:
    """Weights of the distillation terms (0 switches one off) and the auto-encoding span."""

    kl: float = 1.0  # KL(teacher || student) on the probe
    attention: float = 1.0  # per-layer attention-output matching for the probe's queries
    autoencode: float = 0.5  # KL on a span of the segment re-read from its own memory
    answer_ce: float = 0.2  # cross-entropy on the answer tokens of QA probes
    autoencode_len: int = 0  # tokens of that span; 0: l / 16
    attention_queries: int = 64  # probe queries attention matching uses (evenly spaced; 0: all)


@dataclass
class Probe:
    """What is read after segment t: ids (B, c), right-padded.

    kl_mask (B, c): positions whose next-token distribution counts (all for a continuation; the ones
    predicting answer tokens for QA); valid (B, c): real tokens (attention matching); labels (B, c): the
    next token where cross-entropy counts, -100 elsewhere (QA answers), or None.
    """

    ids: torch.Tensor
    kl_mask: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device) -> "Probe":
        return Probe(self.ids.to(device), self.kl_mask.to(device), self.valid.to(device),
                     None if self.labels is None else self.labels.to(device))


@dataclass
class DistillBatch:
    """segments (B, T, l); probes[t] is read after segment t."""

    segments: torch.Tensor
    probes: list[Probe]

    @property
    def tokens(self) -> int:
        return self.segments.numel()


# -- the teacher's attention, captured ------------------------------------------------------------------
@dataclass
class Captured:
    """One layer of the teacher's probe pass: rotated queries (B, H, c, d), the probe's own rotated keys and
    values (B, Hkv, c, d), the attention output (B, H, c, d) and the layer's scaling."""

    query: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    output: torch.Tensor
    scaling: float


def distill_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      uio_capture: list | None = None, **kwargs):
    """SDPA over [cache | probe] (causal among the probe) that records what attention matching needs."""
    if uio_capture is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    q_len, k_len = query.shape[2], key.shape[2]
    mask = causal_offset_mask(q_len, k_len, query.device, query.dtype)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    uio_capture.append(Captured(query, key[:, :, -q_len:], value[:, :, -q_len:], out,
                                scaling if scaling is not None else module.scaling))
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPL, distill_attention)


def read_after(lm: LoadedModel, keys: torch.Tensor, values: torch.Tensor, ids: torch.Tensor,
               capture: list | None = None) -> torch.Tensor:
    """Logits (B, c, V) of ``ids`` read after keys/values (layers, B, m, kv, hd), keys pre-RoPE, at 0..m-1."""
    m, c = keys.shape[2], ids.shape[1]
    cache = cache_from(lm, keys, values) if m else None
    pos = torch.arange(m, m + c, device=ids.device)
    kwargs = {}
    previous = lm.model.config._attn_implementation
    if capture is not None:
        lm.model.config._attn_implementation = ATTN_IMPL
        kwargs["uio_capture"] = capture
    try:
        out = lm.model(input_ids=ids, past_key_values=cache, position_ids=pos[None].expand(ids.shape[0], -1),
                       cache_position=pos, use_cache=cache is not None, **kwargs)
    finally:
        lm.model.config._attn_implementation = previous
    return out.logits


# -- the losses -------------------------------------------------------------------------------------------
def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


def kl_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(teacher || student), in nats."""
    t = teacher_logits.float().log_softmax(-1)
    s = student_logits.float().log_softmax(-1)
    return _masked_mean((t.exp() * (t - s)).sum(-1), mask)


def attention_loss(lm: LoadedModel, captured: list[Captured], mem_keys: torch.Tensor, mem_values: torch.Tensor,
                   teacher_context: int, mask: torch.Tensor, queries: int = 0) -> torch.Tensor:
    """Mean over layers of the relative squared error between the teacher's attention output and the same
    queries' attention over [student memories | probe], at the masked probe positions.

    mem_keys/values (layers, B, m, kv, hd) pre-RoPE. The teacher's queries sit at teacher_context + j; the
    memories are rotated to positions shifted by teacher_context - m, so every query-key distance is the
    one the student's own forward has (memories at 0..m-1, the probe from m). ``queries`` > 0: only that
    many evenly spaced probe positions (the attention backward dominates this term's cost on a CPU).
    """
    m = mem_keys.shape[2]
    c = mask.shape[1]
    rows = torch.arange(c, device=mask.device)
    if 0 < queries < c:
        rows = torch.linspace(c - 1, 0, queries, device=mask.device).round().long().flip(0).unique()
    mask = mask[:, rows]
    values = mem_values.transpose(-3, -2)
    keys = rotate_keys(lm, mem_keys, start=teacher_context - m) if m else values  # (layers, B, kv, m, hd)
    per_layer = []
    for layer, cap in enumerate(captured):
        k = torch.cat([keys[layer].to(cap.keys.dtype), cap.keys], 2)
        v = torch.cat([values[layer].to(cap.values.dtype), cap.values], 2)
        attn_mask = causal_offset_mask(c, k.shape[2], k.device, cap.query.dtype)[rows]
        out = F.scaled_dot_product_attention(cap.query[:, :, rows], k, v, attn_mask=attn_mask, scale=cap.scaling,
                                             enable_gqa=cap.query.shape[1] != k.shape[1])
        target = cap.output[:, :, rows].float()
        err = (out.float() - target).square().sum(-1).mean(1)  # (B, queries): mean over heads
        ref = target.square().sum(-1).mean(1)
        per_layer.append(_masked_mean(err, mask) / _masked_mean(ref, mask).clamp_min(1e-8))
    return torch.stack(per_layer).mean()


def _answer_ce(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    if labels is None or not (labels != -100).any():
        return None
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


# -- one step --------------------------------------------------------------------------------------------
Memorize = Callable[[Ordinary], tuple[torch.Tensor, torch.Tensor]]


def distill_step(encoder: Encoder, batch: DistillBatch, engine: ReservoirTBPTT,
                 cfg: DistillConfig = DistillConfig(), rng: random.Random | None = None,
                 autocast: torch.dtype | None = None, memorize: Memorize | None = None) -> dict[str, float]:
    """Run the memory chain over ``batch``, accumulating the distillation gradient into the adapter.

    ``memorize`` (ordinary pass -> memory keys, values (layers, B, slots, kv, hd)) replaces the encoder's
    memories (tests: the segment's own keys and values give zero loss). Returns the mean of each term over
    the segments where it was computed, and ``total``.
    """
    rng = rng or random.Random()
    lm = encoder.lm
    dev = lm.device
    segments = batch.segments.to(dev)
    b, t_max, l = segments.shape
    memorize = memorize or (lambda o: encoder.memories(o)[:2])
    ae_len = min(l, cfg.autoencode_len or max(1, l // 16))
    amp = torch.autocast(dev.type, dtype=autocast) if autocast else torch.autocast(dev.type, enabled=False)
    mem_k: list[torch.Tensor] = []
    mem_v: list[torch.Tensor] = []
    sums: dict[str, list[float]] = {name: [] for name in (*TERMS, "total")}
    for t in range(t_max):
        seg = segments[:, t]
        with amp:
            ordinary = encoder.ordinary(seg)
            k, v = memorize(ordinary)
        k_leaf, v_leaf = engine.add(k, v)
        earlier_k = [x.detach() for x in mem_k]
        earlier_v = [x.detach() for x in mem_v]
        mem_k.append(k_leaf)
        mem_v.append(v_leaf)
        probe = batch.probes[t].to(dev)
        losses: dict[str, torch.Tensor] = {}
        with amp:
            student_k, student_v = torch.cat(mem_k, 2), torch.cat(mem_v, 2)
            teacher_k = torch.cat([*earlier_k, ordinary.keys], 2)
            teacher_v = torch.cat([*earlier_v, ordinary.values], 2)
            captured: list[Captured] = []
            if cfg.kl or cfg.attention:
                with torch.no_grad():
                    teacher = read_after(lm, teacher_k, teacher_v, probe.ids,
                                         capture=captured if cfg.attention else None)
            if cfg.kl or cfg.answer_ce:
                student = read_after(lm, student_k, student_v, probe.ids)
                if cfg.kl:
                    losses["kl"] = kl_loss(teacher, student, probe.kl_mask)
                ce = _answer_ce(student, probe.labels) if cfg.answer_ce else None
                if ce is not None:
                    losses["answer_ce"] = ce
            if cfg.attention:
                losses["attention"] = attention_loss(lm, captured, student_k, student_v, teacher_k.shape[2],
                                                     probe.valid, cfg.attention_queries)
            del captured
            if cfg.autoencode:
                start = rng.randrange(l - ae_len + 1)
                span = seg[:, start:start + ae_len]
                with torch.no_grad():
                    teacher_ae = read_after(lm, ordinary.keys, ordinary.values, span)
                student_ae = read_after(lm, k_leaf, v_leaf, span)
                losses["autoencode"] = kl_loss(teacher_ae, student_ae, torch.ones_like(span, dtype=torch.float))
        del ordinary
        total = sum(getattr(cfg, name) * loss for name, loss in losses.items())
        if losses:
            engine.backward(total / t_max)
            for name, loss in losses.items():
                sums[name].append(float(loss.detach()))
            sums["total"].append(float(total.detach()))
    engine.finish()
    return {name: sum(v) / len(v) for name, v in sums.items() if v}


class _Frozen:
    """An engine for evaluation: memories pass through, no gradient is kept."""

    peak_graphs = pushes = 0

    def add(self, *memory):
        return memory

    def backward(self, loss) -> None:
        pass

    def finish(self) -> None:
        pass


@torch.no_grad()
def evaluate(encoder: Encoder, batches, cfg: DistillConfig = DistillConfig(), seed: int = 0,
             memorize: Memorize | None = None) -> dict[str, float]:
    """Mean distillation terms over ``batches`` (held-out), without gradients; the training RNGs are untouched.

    ``memorize`` evaluates other memories (a training-free compressor's, none) on the same probes.
    """
    rng = random.Random(seed)
    sums: dict[str, list[float]] = {}
    for batch in batches:
        for name, value in distill_step(encoder, batch, _Frozen(), cfg, rng=rng, memorize=memorize).items():
            sums.setdefault(name, []).append(value)
    return {name: sum(v) / len(v) for name, v in sums.items()}
