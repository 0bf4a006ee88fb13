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


def shuffled_documents(texts: Sequence[str], tokenizer, seed) -> Iterator[tuple[int, list[int]]]:
    """(epoch, token ids + eos) of every text, in a fresh order per epoch (seeded: replayable), forever."""
    if not texts:
        raise ValueError("no texts to read")
    eos = tokenizer.eos_token_id
    epoch = 0
    while True:
        order = list(range(len(texts)))
        random.Random(f"{seed}/{epoch}").shuffle(order)
        for i in order:
            ids = tokenizer(texts[i], add_special_tokens=False, verbose=False)["input_ids"]
            yield epoch, ids + ([eos] if eos is not None else [])
        epoch += 1


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
        epoch, buf, yielded = -1, [], True
        for e, ids in shuffled_documents(self.texts, self.tokenizer, self.seed):
            if e != epoch:  # a new epoch starts with an empty buffer
                if not yielded:
                    raise ValueError(f"the texts hold fewer than one chain of {size} tokens")
                epoch, buf, yielded = e, [], False
                self.epoch = e
            buf.extend(ids)
            while len(buf) >= size:
                yield buf[:size]
                yielded = True
                buf = buf[size:]

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


# -- the distillation recipe's data (issue 20) ---------------------------------------------------------------
# Synthetic segments are drawn from seeds that no evaluation uses: bench/eval_compress.py and eval_memory.py draw
# pass keys from small integer seeds and planted books from random.Random(0); training draws from string seeds
# "uio-train/<seed>/..." (and pass-key seeds >= 10**6).
def _chat_prompt(tokenizer, question: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"])


def qa_probe(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of a chat question and its answer; labels[j] = ids[j+1] where j predicts an answer token."""
    prompt = _chat_prompt(tokenizer, question)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    ids = prompt + answer_ids
    labels = [-100] * len(ids)
    for j in range(len(prompt) - 1, len(ids) - 1):
        labels[j] = ids[j + 1]
    return ids, labels


def passkey_segment(tokenizer, length: int, rng: random.Random) -> tuple[list[int], str, str]:
    """A pass-key document of exactly ``length`` tokens (bench/qa/passkey.py), its question and answer."""
    from bench.qa import passkey

    seed = 10**6 + rng.randrange(10**9)  # never one of the evaluation's seeds
    text, key = passkey.passkey_document(tokenizer, length, rng.random(), seed=seed)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
    return ids, passkey.QUESTION, f"The pass key is {key}."


def planted_fact(segment: list[int], tokenizer, rng: random.Random) -> tuple[list[int], str, str]:
    """The segment with a made-up fact (bench/qa/planted.py's kinds) written over a random stretch, a question
    about it (exact or paraphrased) and the fact as the answer."""
    from bench.qa import planted

    fact = planted._make_fact(rng.choice(planted.KINDS), planted._Pool(rng))
    fact_ids = tokenizer(" " + fact.sentence + " ", add_special_tokens=False)["input_ids"]
    from uio.train.objectives import plant

    question = fact.exact_q if rng.random() < 0.5 else fact.para_q
    return plant(segment, fact_ids, rng), question, fact.sentence


class DistillBatches:
    """An endless, replayable stream of ``DistillBatch``: B chains of T segments and their probes.

    Rows are cut from the same packed token stream as ``ChainBatches`` (documents in a seeded shuffled order):
    T*l + c tokens each, where probe t is the c tokens after segment t. Each segment is replaced by a pass-key
    document (probability ``passkey``) or gets a planted fact (``planted``); its probe is then the question and
    the answer. Curriculum: the first ``short_steps`` batches use l = ``short_len`` with ``short_batch_size``
    rows (default: the same tokens per batch). Synthetic draws depend only on (seed, batch index, row, t), so a
    resume replays only the token stream.
    """

    def __init__(self, texts: Sequence[str], tokenizer, segment_len: int, segments: int, batch_size: int,
                 seed: int = 0, continuation_len: int = 0, passkey: float = 0.1, planted: float = 0.2,
                 short_len: int = 0, short_steps: int = 0, short_batch_size: int = 0):
        if not texts:
            raise ValueError("no training texts")
        self.texts, self.tokenizer = list(texts), tokenizer
        self.l, self.t, self.b, self.seed = segment_len, segments, batch_size, seed
        self.continuation_len = continuation_len or max(1, segment_len // 4)
        self.passkey, self.planted = passkey, planted
        self.short_len = short_len if 0 < short_len < segment_len else 0
        self.short_steps = short_steps if self.short_len else 0
        self.short_batch_size = short_batch_size or (batch_size * segment_len // self.short_len if self.short_len
                                                     else batch_size)
        self.position = 0
        self.epoch = 0
        self._tokens = self._stream()
        self._buf: list[int] = []

    def shape(self, index: int) -> tuple[int, int, int]:
        """(rows, l, c) of batch ``index``."""
        if index < self.short_steps:
            return self.short_batch_size, self.short_len, max(1, self.continuation_len * self.short_len // self.l)
        return self.b, self.l, self.continuation_len

    def _stream(self) -> Iterator[list[int]]:
        for epoch, ids in shuffled_documents(self.texts, self.tokenizer, self.seed):
            self.epoch = epoch
            yield ids

    def _take(self, n: int) -> list[int]:
        while len(self._buf) < n:
            self._buf.extend(next(self._tokens))
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def __iter__(self) -> "DistillBatches":
        return self

    def __next__(self):
        batch = self._make(self.position)
        self.position += 1
        return batch

    def skip_to(self, position: int) -> None:
        """Replay the token stream up to ``position`` batches (resume); synthetic segments are not redrawn."""
        self._tokens, self._buf, self.position = self._stream(), [], 0
        while self.position < position:
            rows, l, c = self.shape(self.position)
            for _ in range(rows):
                self._take(self.t * l + c)
            self.position += 1

    def _make(self, index: int):
        from uio.train.distill import DistillBatch, Probe

        rows, l, c = self.shape(index)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        segs = torch.empty(rows, self.t, l, dtype=torch.long)
        probes: list[list[tuple[list[int], list[int] | None]]] = [[] for _ in range(self.t)]
        for r in range(rows):
            chain = self._take(self.t * l + c)
            for t in range(self.t):
                seg = chain[t * l:(t + 1) * l]
                rng = random.Random(f"uio-train/{self.seed}/{index}/{r}/{t}")
                draw = rng.random()
                if draw < self.passkey and l >= 96:  # shorter than the instruction + key sentence: plain text
                    seg, question, answer = passkey_segment(self.tokenizer, l, rng)
                elif draw < self.passkey + self.planted:
                    seg, question, answer = planted_fact(seg, self.tokenizer, rng)
                else:
                    question = None
                segs[r, t] = torch.tensor(seg, dtype=torch.long)
                if question is None:
                    probes[t].append((chain[(t + 1) * l:(t + 1) * l + c], None))
                else:
                    probes[t].append(qa_probe(self.tokenizer, question, answer))
        out = []
        for t in range(self.t):
            width = max(len(ids) for ids, _ in probes[t])
            ids = torch.full((rows, width), pad, dtype=torch.long)
            valid = torch.zeros(rows, width)
            kl_mask = torch.zeros(rows, width)
            labels = torch.full((rows, width), -100, dtype=torch.long)
            for r, (p, lab) in enumerate(probes[t]):
                ids[r, :len(p)] = torch.tensor(p)
                valid[r, :len(p)] = 1
                if lab is None:
                    kl_mask[r, :len(p)] = 1
                else:
                    labels[r, :len(p)] = torch.tensor(lab)
                    kl_mask[r, :len(p)] = (torch.tensor(lab) != -100).float()
            out.append(Probe(ids, kl_mask, valid, labels if (labels != -100).any() else None))
        return DistillBatch(segs, out)

    @property
    def tokens_per_batch(self) -> int:
        rows, l, _ = self.shape(max(0, self.position - 1))
        return rows * self.t * l
