"""kvzip-fast: KVzip's keep decisions predicted by a learned scorer, in one prefill (no repeat pass).

The scorer (``uio.compress.scorer.KVScorer``, one tiny MLP per layer, trained
by ``python -m uio.train.scorer`` to rank KV pairs as ``KVzipCompressor.score``
does) reads each layer's attention input during the segment's prefill (a
forward pre-hook, so no hidden state is kept past its layer). Selection,
sinks and slot counts are ``ScoringCompressor``'s, so the memories have the
shape KVzip's have; only the choice of tokens differs.

Weights: ``uio/weights/scorer-<model key>.safetensors`` (``scorer_path``) for
the embedded models, or ``weights=`` a file. A scorer with ``cross`` features (version 2) also reads each
layer's rotated queries and keys (``uio.compress.scorer.cross_features``) in ``observe``, so its layer is
scored there, from the hidden state the pre-hook kept until then. A model without a scorer, or
weights made for another base model, raise a clear error rather than guess.
The memories' identity includes the weights' digest.
"""
from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import torch

from uio.compress.base import AUTO_POOL, Prefill, ScoringCompressor, model_shape
from uio.compress.scorer import KVScorer, cross_features, scorer_path
from uio.model import LoadedModel, embedded_key

_LOADED: dict[tuple[str, int], tuple[weakref.ref, KVScorer]] = {}


def scorer_for(lm: LoadedModel, weights: str | Path | None = None) -> KVScorer:
    """The scorer for ``lm`` (``weights`` or the shipped one), loaded once per file and model object."""
    if weights:
        path = Path(weights)
    else:
        key = embedded_key(lm.name)
        if key is None:
            raise ValueError(f"no kvzip-fast scorer ships for model {lm.name!r} (only for the embedded models); "
                             "train one with `python -m uio.train.scorer` and pass weights=, or use 'kvzip'")
        path = scorer_path(key)
    cache_key = (str(path.resolve()), id(lm.model))
    hit = _LOADED.get(cache_key)
    if hit is None or hit[0]() is not lm.model:
        hit = (weakref.ref(lm.model), KVScorer.load(path, lm, device=lm.device))  # refuses another model's
        _LOADED[cache_key] = hit
    return hit[1]


_DIGESTS: dict[int, tuple[weakref.ref, str]] = {}


def scorer_digest(lm: LoadedModel, weights: str | Path | None = None) -> str:
    """The digest of ``scorer_for(lm, weights)``, hashed once per loaded scorer (a loaded scorer is never trained
    further): every question's memory identity reads it, and hashing the weights took ~4 ms a time."""
    scorer = scorer_for(lm, weights)
    hit = _DIGESTS.get(id(scorer))
    if hit is None or hit[0]() is not scorer:
        hit = (weakref.ref(scorer), scorer.digest())
        _DIGESTS[id(scorer)] = hit
    return hit[1]


def scorer_fits(lm: LoadedModel) -> bool:
    """True when a shipped scorer exists for ``lm`` and was made for its base model."""
    try:
        scorer_for(lm)
    except (ValueError, FileNotFoundError):
        return False
    return True


@dataclass
class KVzipFastCompressor(ScoringCompressor):
    """Keep the KV pairs a learned per-layer scorer ranks highest (KVzip's choice, predicted)."""

    name: ClassVar[str] = "kvzip-fast"
    label: ClassVar[str] = "KVzip-fast (learned scorer, one pass)"
    version: ClassVar[str] = "2"  # 2: the scorer may read the prefill's queries and keys (cross features)
    shares: ClassVar[bool] = True  # scores compare across segments (Config.memory_share)
    pool: int = AUTO_POOL  # pooled over 3 tokens at 32x (the base class's rule)
    weights: str = field(default="", metadata={"identity": False})  # "" -> the shipped scorer; its digest counts

    def _identity(self, lm: LoadedModel) -> str:
        # The weights' digest, not their path, is what changes the memories.
        digest = scorer_digest(lm, self.weights or None)
        return hashlib.sha256((super()._identity(lm) + digest).encode()).hexdigest()

    def prefill(self, lm: LoadedModel, tokens: Sequence[int]) -> Prefill:
        """The plain prefill, with each layer's scores computed from its attention input on the way."""
        from uio.adapter import body

        scorer = scorer_for(lm, self.weights or None)
        feats = scorer.features(len(tokens), torch.as_tensor(list(tokens)))  # once per segment, every layer
        scores: dict[int, torch.Tensor] = {}
        hidden_in: dict[int, torch.Tensor] = {}
        cross = scorer.config.cross
        rotary = body(lm).rotary_emb

        def hook(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if cross:  # scored in observe, once the layer's queries and keys exist
                hidden_in[module.layer_idx] = hidden
            else:
                scores[module.layer_idx] = scorer(module.layer_idx, hidden, feats=feats)

        def observe(module, query, keys):
            if cross:
                c = cross_features(module, query, keys, rotary, scorer.config.cross_stride)
                scores[module.layer_idx] = scorer(module.layer_idx, hidden_in.pop(module.layer_idx), feats=feats,
                                                  cross=c)

        handles = [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in body(lm).layers]
        self._observer = observe
        try:
            pre = super().prefill(lm, tokens)
        finally:
            self._observer = None
            for h in handles:
                h.remove()
        pre.observed = [scores[i] for i in range(len(scores))]
        return pre

    def observe(self, module: torch.nn.Module, query: torch.Tensor, keys: torch.Tensor):
        fn = getattr(self, "_observer", None)
        return fn(module, query, keys) if fn else None

    def mass(self, scores: torch.Tensor) -> torch.Tensor:
        # The scorer ranks like KVzip's log scores (its listwise loss): pool exp(score), per head.
        return (scores - scores.amax(-1, keepdim=True)).exp()

    def score(self, lm: LoadedModel, pre: Prefill) -> torch.Tensor:
        layers = model_shape(lm)[0]
        if len(pre.observed) != layers:
            raise RuntimeError(f"kvzip-fast scored {len(pre.observed)} of {layers} layers")
        return torch.stack(pre.observed)  # (layers, kv, n)
