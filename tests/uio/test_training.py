"""Training the memory model: the reservoir TBPTT estimator and the loop, on tiny random models."""
import random

import pytest
import torch

from tests.conftest import _tiny
from uio.adapter import UIOAdapter
from uio.encoder import Encoder
from uio.memory import MemoryConfig
from uio.train.chain import ObjectiveWeights, chain_step
from uio.train.tbptt import ReservoirTBPTT

CFG = MemoryConfig(segment_len=16, num_mem=4, enc_rank=4, enc_alpha=8, head_rank=4, head_alpha=8)
T = 6
CONTINUATION = ObjectiveWeights(continuation=1.0, autoencode=0.0, recall=0.0)


@pytest.fixture(scope="module")
def setup(tokenizer):
    lm = _tiny("llama", tokenizer)
    adapter = UIOAdapter(lm, CFG).randomize_(std=0.2)
    for p in adapter.parameters():
        p.requires_grad_(True)
    segments = torch.randint(10, 3000, (1, T, CFG.segment_len), generator=torch.Generator().manual_seed(0))
    return Encoder(adapter), segments


def flat_grad(params):
    # The last layer's encoder LoRA gets no gradient: memories are read at that layer's input.
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def gradient(encoder, segments, capacity, unbiased=True, seed=0):
    params = encoder.adapter.parameters()
    for p in params:
        p.grad = None
    engine = ReservoirTBPTT(capacity, unbiased=unbiased, rng=random.Random(seed))
    chain_step(encoder, segments, engine, CONTINUATION)
    assert engine.peak_graphs <= capacity + 1  # the reservoir plus the segment being read
    return flat_grad(params).clone(), engine


def test_full_bptt_matches_plain_autograd_through_the_chain(setup):
    """With S >= T nothing is dropped: the engine equals one backward through the whole chain."""
    encoder, segments = setup
    full, engine = gradient(encoder, segments, capacity=T)
    assert engine.pushes == T - 1  # the last memory feeds no continuation loss
    from uio.train.objectives import decoder_loss

    params = encoder.adapter.parameters()
    for p in params:
        p.grad = None
    keys, values, total = [], [], 0
    for t in range(T):
        k, v, _ = encoder.forward(segments[:, t])
        keys.append(k.unflatten(1, (1, CFG.num_mem)))
        values.append(v.unflatten(1, (1, CFG.num_mem)))
        if t + 1 < T:
            total = total + decoder_loss(encoder.lm, torch.cat(keys, 2), torch.cat(values, 2), segments[:, t + 1]) / T
    total.backward()
    direct = flat_grad(params)
    assert torch.allclose(full, direct, rtol=1e-4, atol=1e-7)


def test_reservoir_estimator_is_unbiased_and_the_uncorrected_one_is_not(setup):
    encoder, segments = setup
    full, _ = gradient(encoder, segments, capacity=T)
    draws = [gradient(encoder, segments, capacity=1, seed=s)[0] for s in range(160)]
    plain = [gradient(encoder, segments, capacity=1, unbiased=False, seed=s)[0] for s in range(160)]

    def rel_err(gs):
        return float((torch.stack(gs).mean(0) - full).norm() / full.norm())

    few, many = rel_err(draws[:10]), rel_err(draws)
    assert many < 0.08, many  # the mean of many draws approaches full BPTT...
    assert many < few  # ...and gets closer as draws grow
    biased = torch.stack(plain).mean(0)
    ratio = float(biased.norm() / full.norm())
    assert ratio < 0.95 and rel_err(plain) > 2 * many, (ratio, rel_err(plain))


def test_peak_retained_graphs_stay_within_the_reservoir(setup):
    encoder, segments = setup
    for s in (1, 2, 4):
        _, engine = gradient(encoder, segments, capacity=s, seed=3)
        assert engine.peak_graphs == s + 1 and engine.pushes == T - 1


def test_every_trainable_group_receives_gradient_step_after_step(tokenizer):
    """PEFT toggles requires_grad when adapters are switched; training must not lose any group."""
    lm = _tiny("qwen2", tokenizer)
    adapter = UIOAdapter(lm, CFG).randomize_(std=0.2)
    for p in adapter.parameters():
        p.requires_grad_(True)
    encoder = Encoder(adapter)
    segments = torch.randint(10, 3000, (2, 3, CFG.segment_len), generator=torch.Generator().manual_seed(1))
    weights = ObjectiveWeights(continuation=1.0, autoencode=1.0, recall=0.0)
    for step in range(2):  # the second step runs after encoding() was entered and left several times
        for p in adapter.parameters():
            p.grad = None
        chain_step(encoder, segments, ReservoirTBPTT(2, rng=random.Random(step)), weights)
        assert all(p.requires_grad for p in adapter.parameters())
        grads = {n: p.grad for n, p in adapter.named_parameters().items()}
        assert len(grads) == len(adapter.parameters())
        last = f"layers.{lm.model.config.num_hidden_layers - 1}."
        for n, g in grads.items():
            if last in n and "uio_encoder" in n:
                continue  # the last layer's encoder LoRA acts after the memories are read
            assert g is not None and g.abs().sum() > 0, f"step {step}: no gradient for {n}"
