"""One training step over a batch of documents: the memory chain, its losses and their gradients."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from uio.encoder import Encoder
from uio.train.objectives import decoder_loss, make_recall_task, plant
from uio.train.tbptt import ReservoirTBPTT


@dataclass(frozen=True)
class ObjectiveWeights:
    """How much each objective counts; 0 switches one off."""

    continuation: float = 1.0  # segment t+1 given memories of segments <= t
    autoencode: float = 0.5  # segment t from its own memory
    recall: float = 0.5  # a planted fact asked about after a later segment


def chain_step(encoder: Encoder, segments: torch.Tensor, engine: ReservoirTBPTT,
               weights: ObjectiveWeights = ObjectiveWeights(), rng: random.Random | None = None,
               autocast: torch.dtype | None = None) -> dict[str, float]:
    """Run the memory chain over ``segments`` (B, T, l), accumulating gradients into the adapter.

    Returns the mean of each loss over the steps where it was computed.
    """
    rng = rng or random.Random()
    lm, m = encoder.lm, encoder.config.num_mem
    dev = lm.device
    segments = segments.to(dev)
    b, t_max, _ = segments.shape
    recall, ask_after = None, -1
    if weights.recall > 0 and t_max >= 2:
        recall = make_recall_task(lm.tokenizer, rng)
        where = rng.randrange(t_max - 1)
        ask_after = rng.randrange(where + 1, t_max)  # asked only once the fact's segment is a memory
        segments = segments.clone()
        for row in range(b):
            segments[row, where] = torch.tensor(plant(segments[row, where].tolist(), recall.fact_ids, rng))
    keys, values = [], []
    sums: dict[str, list[float]] = {"continuation": [], "autoencode": [], "recall": []}
    amp = torch.autocast(dev.type, dtype=autocast) if autocast else torch.autocast(dev.type, enabled=False)
    for t in range(t_max):
        with amp:
            k, v, _ = encoder.forward(segments[:, t])
        kl, vl = engine.add(k.unflatten(1, (b, m)), v.unflatten(1, (b, m)))
        keys.append(kl)
        values.append(vl)
        losses = {}
        with amp:
            past_k, past_v = torch.cat(keys, 2), torch.cat(values, 2)
            if weights.continuation and t + 1 < t_max:
                losses["continuation"] = decoder_loss(lm, past_k, past_v, segments[:, t + 1])
            if weights.autoencode:
                losses["autoencode"] = decoder_loss(lm, kl, vl, segments[:, t])
            if recall is not None and t == ask_after:
                ids, labels = recall.input_and_labels(dev)
                losses["recall"] = decoder_loss(lm, past_k, past_v, ids.expand(b, -1), labels.expand(b, -1))
        if losses:
            total = sum(getattr(weights, name) * loss for name, loss in losses.items())
            engine.backward(total / t_max)
            for name, loss in losses.items():
                sums[name].append(float(loss.detach()))
    engine.finish()
    return {name: sum(v) / len(v) for name, v in sums.items() if v}
