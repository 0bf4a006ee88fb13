"""Segment compressors: one method per file, one interface (``uio.compress.base.Compressor``).

    from uio.compress import make_compressor, identity
    comp = make_compressor("kvzip", 8)            # or "keynorm", "snapkv", "streaming", "uio" (adapter=...)
    mem = comp.compress(lm, token_lists, segment_ids, token_spans, progress)   # -> uio.memory.Memory
    Memory.load(path, expect_fingerprint=identity(comp, lm))
"""
from __future__ import annotations

from uio import registry
from uio.compress.base import Compressor, ScoringCompressor, identity, slots_at_ratio, storage_dtype
from uio.compress.keynorm import KeyNormCompressor
from uio.compress.kvzip import KVzipCompressor
from uio.compress.kvzip_fast import KVzipFastCompressor, scorer_fits
from uio.compress.snapkv import SnapKVCompressor
from uio.compress.streaming import StreamingCompressor
from uio.compress.uio_encoder import UIOCompressor

COMPRESSORS: dict[str, type[Compressor]] = {
    cls.name: cls for cls in (KVzipCompressor, KVzipFastCompressor, KeyNormCompressor, SnapKVCompressor, StreamingCompressor,
                              UIOCompressor)
}


# The compressor "auto" means, per embedded model: the best measured training-free method
# (docs/COMPRESSION.md). An untrained UIO adapter is never a default; "uio" is chosen by name only.
# Qwen: kvzip-fast v2 is at or above KVzip on pass key (2K, 8K) and planted QA at 8x and 32x, at 1.02x a
# plain forward's speed (KVzip 0.36x). SmolLM2 answers too little from either to tell them apart: kvzip.
DEFAULTS: dict[str, str] = {"qwen": "kvzip-fast", "smollm2": "kvzip"}
FALLBACK = "kvzip"  # any other model


def compressor_choices() -> tuple[str, ...]:
    """Every name ``resolve_compressor`` accepts: "auto", then the registered compressors."""
    return registry.choices(COMPRESSORS)


def compressor_label(name: str) -> str:
    """What the UI shows for a compressor name ("auto" included)."""
    return registry.label(COMPRESSORS, name, "Automatic (the measured default for the model)")


def resolve_compressor(name: str, model_key: str | None, lm=None) -> str:
    """The registered compressor ``name`` stands for ("auto": the measured default of ``model_key``).

    With the loaded model ``lm`` given, "auto" never picks a learned compressor whose weights do not fit it
    (another model under the same key: a fine-tune, a test's tiny model): it falls back to ``FALLBACK``.
    A compressor named explicitly is kept, and refuses such a model itself with a clear error.
    """
    name = name.lower()
    if name == "auto":
        chosen = DEFAULTS.get(model_key or "", FALLBACK)
        if chosen == KVzipFastCompressor.name and lm is not None and not scorer_fits(lm):
            return FALLBACK
        return chosen
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; choose one of {', '.join(compressor_choices())}")
    return name


def make_compressor(name: str, ratio: int, **kw) -> Compressor:
    """The compressor ``name`` at ``ratio`` (8 -> 1/8 of the tokens as slots); ``kw``: its other fields."""
    try:
        cls = COMPRESSORS[name]
    except KeyError:
        raise ValueError(f"unknown compressor {name!r}; choose one of {', '.join(sorted(COMPRESSORS))}") from None
    return cls(ratio=ratio, **kw)


__all__ = ["COMPRESSORS", "DEFAULTS", "compressor_choices", "compressor_label", "resolve_compressor", "Compressor", "ScoringCompressor", "KVzipCompressor", "KVzipFastCompressor", "KeyNormCompressor",
           "SnapKVCompressor", "StreamingCompressor", "UIOCompressor", "identity", "make_compressor",
           "slots_at_ratio", "storage_dtype"]
