"""Training batches: chains of T segments of l tokens cut from documents, B chains per batch.

Documents are read in a seeded shuffled order, tokenized one at a time and
packed into one token stream (an EOS between documents), which is cut into
chains of T*l tokens; a small seeded shuffle buffer mixes chains of
different documents into each batch. Everything depends only on the texts
and the seed, so a position (batches consumed) is enough to resume: the
stream is replayed up to it.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterator, Sequence

import torch


def read_jsonl(path: str | Path, sources: Sequence[str] = ()) -> list[str]:
    """The texts of a corpus split written by data/build_corpus.py, optionally of some sources only."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if not sources or doc["source"] in sources:
                out.append(doc["text"])
    return out


class ChainBatches:
    """An endless, replayable stream of (B, T, l) token batches."""

    def __init__(self, texts: Sequence[str], tokenizer, segment_len: int, segments: int, batch_size: int,
                 seed: int = 0, shuffle_buffer: int = 32):
        if not texts:
            raise ValueError("no training texts")
        self.texts, self.tokenizer = list(texts), tokenizer
        self.l, self.t, self.b = segment_len, segments, batch_size
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.position = 0  # batches handed out so far
        self.epoch = 0
        self._it = self._batches()

    def _chains(self) -> Iterator[list[int]]:
        size = self.l * self.t
        eos = self.tokenizer.eos_token_id
        epoch = 0
        while True:
            self.epoch = epoch
            order = list(range(len(self.texts)))
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
            buf: list[int] = []
            yielded = False
            for i in order:
                buf.extend(self.tokenizer(self.texts[i], add_special_tokens=False, verbose=False)["input_ids"])
                if eos is not None:
                    buf.append(eos)
                while len(buf) >= size:
                    yield buf[:size]
                    yielded = True
                    buf = buf[size:]
            if not yielded:
                raise ValueError(f"the texts hold fewer than one chain of {size} tokens")
            epoch += 1

    def _batches(self) -> Iterator[torch.Tensor]:
        rng = random.Random(f"{self.seed}/mix")
        pool: list[list[int]] = []
        for chain in self._chains():
            pool.append(chain)
            if len(pool) < max(self.shuffle_buffer, self.b):
                continue
            batch = [pool.pop(rng.randrange(len(pool))) for _ in range(self.b)]
            yield torch.tensor(batch, dtype=torch.long).view(self.b, self.t, self.l)

    def __iter__(self) -> "ChainBatches":
        return self

    def __next__(self) -> torch.Tensor:
        batch = next(self._it)
        self.position += 1
        return batch

    def skip_to(self, position: int) -> None:
        """Replay the stream from the start up to ``position`` batches (resume)."""
        self._it, self.position = self._batches(), 0
        while self.position < position:
            next(self)

    @property
    def tokens_per_batch(self) -> int:
        return self.b * self.t * self.l
