"""Reciprocal-rank fusion: one score from several rankings of the same items.

score(item) = sum over rankings of weight / (k + rank), rank 1-based; an item a
ranking does not hold adds nothing from it. k = 60 is the constant of Cormack,
Clarke & Buettcher (SIGIR 2009); it keeps one ranking's top item from
outweighing agreement between rankings.
"""
from __future__ import annotations

from typing import Hashable, Sequence

RRF_K = 60


def rrf(rankings: Sequence[Sequence[Hashable]], k: int = RRF_K,
        weights: Sequence[float] | None = None) -> dict[Hashable, float]:
    """{item: fused score} over ``rankings`` (each best first); higher is better."""
    weights = weights or [1.0] * len(rankings)
    out: dict[Hashable, float] = {}
    for ranking, w in zip(rankings, weights):
        for r, item in enumerate(ranking, start=1):
            out[item] = out.get(item, 0.0) + w / (k + r)
    return out
