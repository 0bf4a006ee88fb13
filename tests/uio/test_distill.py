"""Self-distillation (uio/train/distill.py) on tiny random models."""
import random

import pytest
import torch

from tests.conftest import _tiny
from uio.adapter import UIOAdapter
from uio.encoder import Encoder
from uio.memory import MemoryConfig
from uio.train.distill import DistillBatch, DistillConfig, Probe, distill_step
from uio.train.tbptt import ReservoirTBPTT

CFG = MemoryConfig(segment_len=16, num_mem=4, enc_rank=4, enc_alpha=8, head_rank=4, head_alpha=8)
ALL = DistillConfig(kl=1.0, attention=1.0, autoencode=1.0, answer_ce=0.0, autoencode_len=6)


def batch(b=2, t=2, c=6, seed=0) -> DistillBatch:
    g = torch.Generator().manual_seed(seed)
    segments = torch.randint(10, 3000, (b, t, CFG.segment_len), generator=g)
    probes = []
    for _ in range(t):
        ids = torch.randint(10, 3000, (b, c), generator=g)
        valid = torch.ones(b, c)
        valid[1, c - 2:] = 0  # a right-padded row
        labels = torch.full((b, c), -100)
        labels[0, 2:4] = ids[0, 3:5]
        probes.append(Probe(ids, valid.clone(), valid, labels))
    return DistillBatch(segments, probes)


def sharpen(lm):
    with torch.no_grad():  # a random model's logits are nearly flat: sharpen them so differences show
        lm.model.lm_head.weight.mul_(10)
    return lm


def full_segment(ordinary):
    """Memories that are the segment itself: every key and value, as leaves that take gradient."""
    return ordinary.keys.clone().requires_grad_(True), ordinary.values.clone().requires_grad_(True)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_loss_is_zero_when_the_memories_are_the_full_segment(tokenizer, kind):
    enc = Encoder(UIOAdapter(sharpen(_tiny(kind, tokenizer)), CFG, mode="memory"))
    losses = distill_step(enc, batch(), ReservoirTBPTT(2, rng=random.Random(0)), ALL, rng=random.Random(0),
                          memorize=full_segment)
    assert set(losses) == {"kl", "attention", "autoencode", "total"}
    for name, value in losses.items():
        assert abs(value) < 1e-5, (name, value)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_memories_give_positive_losses_and_every_group_gets_gradient(tokenizer, kind):
    lm = sharpen(_tiny(kind, tokenizer))
    adapter = UIOAdapter(lm, CFG, mode="memory").randomize_(std=0.2)
    for p in adapter.parameters():
        p.requires_grad_(True)
    cfg = DistillConfig(answer_ce=0.5, autoencode_len=6)
    losses = distill_step(Encoder(adapter), batch(), ReservoirTBPTT(1, rng=random.Random(0)), cfg,
                          rng=random.Random(0))
    assert all(losses[k] > 1e-3 for k in ("kl", "attention", "autoencode", "answer_ce")), losses
    assert losses["total"] == pytest.approx(sum(getattr(cfg, k) * losses[k] for k in
                                                ("kl", "attention", "autoencode", "answer_ce")), rel=1e-5)
    last = f"layers.{lm.model.config.num_hidden_layers - 1}."
    for n, p in adapter.named_parameters().items():
        if last in n and "uio_encoder" in n:
            continue  # the last layer's encoder LoRA acts after the memories are read
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_attention_term_alone_matches_full_bptt_through_the_engine(tokenizer):
    """With S >= T the engine's gradient equals plain autograd through the whole chain (attention term)."""
    lm = _tiny("llama", tokenizer)
    adapter = UIOAdapter(lm, CFG, mode="memory").randomize_(std=0.2)
    params = adapter.parameters()
    for p in params:
        p.requires_grad_(True)
    cfg = DistillConfig(kl=1.0, attention=1.0, autoencode=0.0, answer_ce=0.0)
    data = batch(t=3)
    distill_step(Encoder(adapter), data, ReservoirTBPTT(3, rng=random.Random(0)), cfg)
    engine_grad = torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone()
    for p in params:
        p.grad = None

    class Direct:  # no leaves: the chain's graph stays whole, one backward at the end
        peak_graphs = pushes = 0

        def __init__(self):
            self.total = 0

        def add(self, *m):
            return m

        def backward(self, loss):
            self.total = self.total + loss

        def finish(self):
            self.total.backward()

    distill_step(Encoder(adapter), data, Direct(), cfg)
    direct = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    assert torch.allclose(engine_grad, direct, rtol=1e-4, atol=1e-7)
