"""KVzip (arXiv 2505.23416): score each KV pair by how much the model needs it to repeat the segment.

Query-agnostic: after the segment's prefill, the model reads a "repeat the
previous context" request followed by the segment's own tokens, with the
segment's KV as its cache. A KV pair the reconstruction queries attend to
strongly carries content; one they ignore can go. Score of token t in layer l,
KV head h: the max over the h's GQA group of query heads and over all
reconstruction queries of the attention weight on t.

Matches kvpress 0.5.5 ``KVzipPress`` scoring (read, not copied): the request is
"\\n\\nRepeat the previous context exactly." + the chat template's end-of-user /
start-of-assistant suffix + the chunk; a segment longer than ``chunk_size`` is
reconstructed chunk by chunk, later chunks asked with "...exactly, starting
with" + the previous chunk's last 8 tokens; the softmax for a chunk runs over
[first n_sink tokens | the chunk's tokens | the request's own tokens] (the
whole cache for one chunk starting at 0, which is the case of Tome's 1,024-token
segments). Differences: kvpress wraps the context in the chat template's user
prefix, a Tome segment is raw text from the middle of a book and is prefilled
alone; kvpress spreads its budget across layers and heads (non-uniform), a Tome
memory keeps the same ``ceil(n/ratio)`` slots in every layer and KV head
(``uniform`` budgets, the ``layerwise`` variant of kvpress), so the decoder's
cache stays rectangular.

Cost: one prefill of n tokens plus one of n + ~20 tokens over an n-token cache
(about 2-3x a plain prefill), and the explicit attention weights, computed in
blocks of ``query_block`` queries so memory stays O(query_block * 2n) per layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from uio.compress.base import (AUTO_POOL, Prefill, ScoringCompressor, attention_logits, causal_offset_mask,
                               model_shape, observed_attention)
from uio.model import LoadedModel
from uio.adapter import body

FIRST_PROMPT = "\n\nRepeat the previous context exactly."
LATER_PROMPT = "\n\nRepeat the part of the previous context exactly, starting with"


def chat_suffix(tokenizer) -> list[int]:
    """Token ids that close a user turn and open the assistant's, from the chat template ([] without one)."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.encode("\n", add_special_tokens=False)
    dummy = "dummy context"
    sep = "\n" + "#" * len(dummy)
    text = tokenizer.apply_chat_template([{"role": "user", "content": dummy + sep}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer.encode(text.split(sep)[-1], add_special_tokens=False)


def repeat_requests(tokenizer, ids: list[int], chunk_size: int, tail: int = 8
                    ) -> list[tuple[int, int, list[int]]]:
    """(start, end, request ids) per reconstruction chunk of the segment ``ids``.

    request = prompt (+ the previous chunk's last ``tail`` tokens for later chunks) + chat suffix + chunk.
    """
    suffix = chat_suffix(tokenizer)
    out = []
    for start in range(0, len(ids), chunk_size):
        end = min(start + chunk_size, len(ids))
        if start == 0:
            prompt = tokenizer.encode(FIRST_PROMPT, add_special_tokens=False)
        else:
            prompt = tokenizer.encode(LATER_PROMPT, add_special_tokens=False) + ids[max(0, start - tail):start]
        out.append((start, end, prompt + suffix + ids[start:end]))
    return out


@dataclass
class KVzipCompressor(ScoringCompressor):
    """Keep the KV pairs that the segment's own reconstruction attends to most."""

    name: ClassVar[str] = "kvzip"
    label: ClassVar[str] = "KVzip (context reconstruction)"
    version: ClassVar[str] = "2"  # 2: slot positions stored, sinks at most 1/8 of a budget
    shares: ClassVar[bool] = True  # scores compare across segments (Config.memory_share)
    chunk_size: int = 2048  # segment tokens reconstructed per repeat pass
    pool: int = AUTO_POOL  # pooled over 3 tokens at 32x (the base class's rule)
    query_block: int = 256  # reconstruction queries per explicit-attention block (memory bound, not a result)

    def params(self) -> dict:
        p = super().params()
        p.pop("query_block")  # only bounds memory: same scores
        return p

    def score(self, lm: LoadedModel, pre: Prefill) -> torch.Tensor:
        layers, _, kv, _ = model_shape(lm)
        n = pre.n
        scores = torch.zeros(layers, kv, n, dtype=torch.float32, device=lm.device)
        net = body(lm)
        for start, end, request in repeat_requests(lm.tokenizer, pre.ids.tolist(), self.chunk_size):
            q_len = len(request)
            sink = min(self.n_sink, start)

            def observe(module, query, keys, start=start, end=end, sink=sink, q_len=q_len):
                # keys: [segment n | request q_len] rotated; score only over the sinks, the chunk and
                # the request itself (kvpress's subset), renormalised by the softmax.
                sub = torch.cat([keys[:, :, :sink], keys[:, :, start:end], keys[:, :, -q_len:]], 2)
                chunk_scores = self.max_attention(module, query, sub, q_len, sink, end - start)
                scores[module.layer_idx, :, start:end] = chunk_scores

            ids = torch.tensor([request], device=lm.device)
            pos = torch.arange(n, n + q_len, device=lm.device)[None]
            with observed_attention(lm):
                net(input_ids=ids, past_key_values=pre.cache, use_cache=True, position_ids=pos,
                    tome_observe=observe)
            pre.cache.crop(-q_len)  # the request's KV must not stay for the next chunk (5.x: negative = remove)
        return scores

    def max_attention(self, module: torch.nn.Module, query: torch.Tensor, keys: torch.Tensor, q_len: int,
                      lo: int, width: int) -> torch.Tensor:
        """(kv, width): max over group heads and queries of the attention on keys [lo, lo + width).

        query (1, H, q_len, d); keys (1, Hkv, K, d) whose last q_len are the queries' own (causal among them).
        Queries go in blocks so the (Hkv, G, block, K) weights stay small. Weights in float32 (kvpress uses
        the model's dtype; a bf16 softmax was not measurably faster here, and float32 keeps near ties apart).
        """
        kv = keys.shape[1]
        k_len = keys.shape[2]
        best = torch.zeros(kv, width, dtype=torch.float32, device=query.device)
        own = k_len - q_len
        for a in range(0, q_len, self.query_block):
            b = min(a + self.query_block, q_len)
            # Queries [a, b) see the segment part and the request's keys [0, b): later keys are masked for
            # every row of the block, so they are left out, and the causal mask only touches that corner.
            logits = attention_logits(module, query[:, :, a:b], keys[:, :, :own + b], None)  # (kv, G, b-a, own+b)
            logits[..., own:] += causal_offset_mask(b - a, b, query.device)
            probs = logits.softmax(-1)  # one fused pass
            best = torch.maximum(best, probs[..., lo:lo + width].amax(dim=(1, 2)))
        return best
