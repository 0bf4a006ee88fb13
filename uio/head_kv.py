"""Keys and values of the text that opens a cache, kept per model: a prompt's constant head is read once.

Why: compressed mode's prompt opens with the same instructions for every question (~30 of its ~270 tokens).
With the memories placed after them (``Config.memory_layout="head"``) nothing comes before those tokens, so
their keys and values are the same on every question, and the prefill before the first token need not compute
them again (``uio.decoder.build_context``). Keyed by the token ids and the position they start at; the tensors
are never written to (the cache only appends to and gathers from what it holds, ``uio/decoder.py``).
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, (1, kv heads, tokens, head dim)


class HeadKV:
    """The last ``size`` heads read, least recently used first out."""

    def __init__(self, size: int = 8):
        self.size = size
        self._items: OrderedDict[tuple, Layers] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    @staticmethod
    def key(ids: list[int], start: int) -> tuple:
        return tuple(ids), start

    def get(self, key: tuple) -> Layers | None:
        with self._lock:
            layers = self._items.get(key)
            if layers is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return layers

    def put(self, key: tuple, layers: Layers) -> None:
        with self._lock:
            self._items[key] = layers
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every head (the model's weights changed)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self) -> dict:  # a model sent to another process (uio/ray_pool.py) starts with none kept
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])
