"""Draft tokens for a greedy answer from its own prompt (prompt lookup): the continuation of the last few tokens'
most recent earlier occurrence.

Why: on the CPU a decoding step is bound by reading the weights, so a forward over nine tokens costs about what
one costs (Qwen-0.5B, two threads: 63 ms for one, 69 ms for nine; ``bench/forward_cost.py``). Answers about a
passage copy its words and the question's, so the tokens that followed the same few tokens earlier in the prompt
are often the next ones: ``uio.generate`` feeds such a draft with the last token, keeps the drafted tokens the
model itself picks at each position, and so hands out the greedy answer in fewer forwards. On the real-manual
answers a simulated lookup of 3 tokens, 8 drafted, needed 0.46 of the forwards in compressed mode and 0.43 in
retrieval (docs/COMPRESSION.md "Twentieth run").
"""
from __future__ import annotations

NGRAM = 3  # longest match looked up; shorter ones are tried when it has none
MAX_DRAFT = 32  # most drafted tokens per forward (a policy's state forgets them unjudged: uio.cache)


class PromptLookup:
    """The tokens so far (the prompt, then every token handed out) with an index of where each 1..``ngram``-gram
    last occurred with a token after it."""

    def __init__(self, tokens: list[int], ngram: int = NGRAM):
        if ngram < 1:
            raise ValueError(f"ngram must be at least 1, not {ngram}")
        self.ngram = ngram
        self.tokens: list[int] = []
        self._last: dict[tuple[int, ...], int] = {}  # n-gram -> start of its latest occurrence followed by a token
        for t in tokens:
            self.append(t)

    def append(self, token: int) -> None:
        """Add the next token: every n-gram ending just before it now has a follower."""
        self.tokens.append(int(token))
        end = len(self.tokens) - 1  # the n-grams ending at ``end`` (exclusive) are followed by the new token
        for g in range(1, min(self.ngram, end) + 1):
            self._last[tuple(self.tokens[end - g:end])] = end - g

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest suffix (``ngram`` tokens at most) seen before; [] if none."""
        if k <= 0:
            return []
        n = len(self.tokens)
        for g in range(min(self.ngram, n), 0, -1):
            start = self._last.get(tuple(self.tokens[n - g:]))
            if start is not None:
                return self.tokens[start + g:start + g + k]
        return []
