"""Unbiased incremental TBPTT over the memory chain (DESIGN.md §2).

The memory chain is an RNN over segments: the decoder loss at step t depends
on the memories of all segments <= t. Full BPTT would keep every segment's
encoder graph alive. Here each memory enters the decoder as a detached leaf;
decoder losses only accumulate gradient on the leaves, and a segment's
encoder graph is kept in a reservoir of at most S graphs. When a graph
leaves the reservoir, the gradient accumulated on its leaf is pushed into it
once (``mem.backward(grad)``) and the graph is freed. Cost: O(T) encoder
backwards, O(S) graphs in memory.

Reservoir sampling keeps each of the t-1 earlier segments alive at step t
with probability min(1, S/(t-1)); scaling the gradient a loss sends to an
earlier, still-alive memory by max(1, (t-1)/S) makes the estimate of the full
BPTT gradient unbiased. Without the factor (``unbiased=False``, what the
public reference code does) the estimate is biased towards short dependencies.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


@dataclass
class _Alive:
    step: int
    memory: tuple[torch.Tensor, ...]  # outputs of the encoder, with their graph
    leaves: tuple[torch.Tensor, ...]  # detached copies the decoder sees
    grads: list[torch.Tensor | None] = field(default_factory=list)


class ReservoirTBPTT:
    """Keeps at most ``capacity`` encoder graphs; S >= T gives full BPTT."""

    def __init__(self, capacity: int, unbiased: bool = True, rng: random.Random | None = None):
        if capacity < 1:
            raise ValueError("capacity S must be at least 1")
        self.capacity, self.unbiased = capacity, unbiased
        self.rng = rng or random.Random()
        self.reservoir: list[_Alive] = []  # earlier segments whose graphs are kept
        self.current: _Alive | None = None  # the segment of this step: always alive
        self.seen = 0  # segments added so far
        self.peak_graphs = 0
        self.pushes = 0

    def add(self, *memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Register the encoder outputs of the next segment; returns the leaves for the decoder."""
        if self.current is not None:
            self._insert(self.current)
        self.seen += 1
        leaves = tuple(m.detach().requires_grad_(True) for m in memory)
        self.current = _Alive(self.seen, memory, leaves, [None] * len(memory))
        self.peak_graphs = max(self.peak_graphs, len(self.reservoir) + 1)
        return leaves

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate a decoder loss of this step into the leaves of all living memories.

        Gradients a loss sends to earlier memories are scaled by max(1, (t-1)/S)
        (t = this step), the inverse of their probability of being alive.
        """
        alive = self.reservoir + ([self.current] if self.current else [])
        leaves = [leaf for a in alive for leaf in a.leaves]
        if not leaves:
            return
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        earlier = self.seen - 1
        scale = max(1.0, earlier / self.capacity) if self.unbiased else 1.0
        i = 0
        for a in alive:
            factor = 1.0 if a is self.current else scale
            for j in range(len(a.leaves)):
                g = grads[i]
                i += 1
                if g is None:
                    continue
                g = g * factor if factor != 1.0 else g
                a.grads[j] = g if a.grads[j] is None else a.grads[j] + g

    def finish(self) -> None:
        """Push every remaining graph (end of the document) and reset."""
        if self.current is not None:
            self._insert(self.current)
            self.current = None
        for a in self.reservoir:
            self._destroy(a)
        self.reservoir = []
        self.seen = 0

    # -- internals -------------------------------------------------------------
    def _insert(self, item: _Alive) -> None:
        """Algorithm R: the k-th item enters with probability S/k, replacing a uniform victim."""
        k = item.step
        if len(self.reservoir) < self.capacity:
            self.reservoir.append(item)
            return
        j = self.rng.randrange(k)
        if j < self.capacity:
            self._destroy(self.reservoir[j])
            self.reservoir[j] = item
        else:
            self._destroy(item)

    def _destroy(self, item: _Alive) -> None:
        outs = [m for m, g in zip(item.memory, item.grads) if g is not None]
        grads = [g for g in item.grads if g is not None]
        if outs:
            torch.autograd.backward(outs, grads)
            self.pushes += 1
        for leaf in item.leaves:
            leaf.requires_grad_(False)  # later losses need no gradient for it any more
        item.memory, item.grads = (), []
