"""Keys and values of the text that opens a cache, kept per model: a prompt's constant head is read once.

Why: compressed mode's prompt opens with the same instructions for every question (~30 of its ~270 tokens).
With the memories placed after them (``Config.memory_layout="head"``) nothing comes before those tokens, so
their keys and values are the same on every question, and the prefill before the first token need not compute
them again (``uio.decoder.build_cache(head=)``, ``build_context(reuse_head=True)``). Keyed by the token ids and
the position they start at; the tensors are never written to (the cache only appends to and gathers from what it
holds, ``uio/decoder.py``).
"""
from __future__ import annotations

import torch

from uio.lru import ByteLRU

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, (1, kv heads, tokens, head dim)


def _nbytes(layers: Layers) -> int:
    return sum(k.nbytes + v.nbytes for k, v in layers)


class HeadKV(ByteLRU[Layers]):
    """The heads read last, within ``capacity`` bytes (a 29-token head of Qwen2.5-0.5B: 0.3 MB in bf16)."""

    def __init__(self, capacity: int = 64 << 20):
        super().__init__(capacity, _nbytes)
        self.hits = 0

    @staticmethod
    def key(ids: list[int], start: int) -> tuple:
        return tuple(ids), start

    def get(self, key: tuple) -> Layers | None:
        layers = super().get(key)
        self.hits += layers is not None
        return layers

    def __getstate__(self) -> dict:  # a model sent to another process (uio/ray_pool.py) starts with none kept
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])
