"""Segments -> memories. The ingestion hot path: a whole document goes through as batches.

Input of one row: the segment's n tokens, padding up to the batch's longest
segment, then M copies of the learned <mem> embedding. Ordinary tokens attend
causally to each other. Memory slot i attends to ordinary tokens [0, c_i) and
to itself only (not to other slots), at RoPE position c_i: each slot
summarises a growing prefix, which spreads the segment over the slots.

Attention is computed in two parts (``encoder_attention``): the ordinary
tokens with plain causal attention (the fast fused kernel, no mask tensor),
and the M memory queries against [ordinary keys | own key] with a small
(M x (n+M)) mask. A single (n+M)^2 additive mask costs ~30 % more on CPU and
rules out flash kernels on GPU.

An adapter in ``"memory"`` mode (Activation Beacon's only_train_beacon) runs
the same attention pattern as two passes: the ordinary tokens through the
frozen model (``ordinary``: their keys and values, once, without gradient:
they are what the plain model computes, and training reuses them as the
teacher's context), then the M ``<mem>`` tokens alone with the encoder LoRA on
(``memories``), reading the ordinary keys and values from a cache. Gradients
then reach only what the memory tokens use: the LoRAs, the ``<mem>``
embedding and the transfer head.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from uio.adapter import UIOAdapter, body
from uio.attention import attention_implementation
from uio.memory import Memory, slots_for, visible_prefix

ATTN_IMPL = "uio_encoder"


def encoder_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      uio_ordinary: int | None = None, **kwargs):
    """Attention over [ordinary tokens | memory tokens]; plain SDPA for any other call.

    query (B, H, L, d), key/value (B, Hkv, L, d); ``attention_mask`` is the
    memory rows' boolean mask (B, 1, M, L) and ``uio_ordinary`` the number of
    ordinary (and padding) positions n, so L = n + M.
    """
    if uio_ordinary is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    n = uio_ordinary
    gqa = query.shape[1] != key.shape[1]
    ordinary = F.scaled_dot_product_attention(query[:, :, :n], key[:, :, :n], value[:, :, :n], is_causal=True,
                                              scale=scaling, enable_gqa=gqa)
    memory = F.scaled_dot_product_attention(query[:, :, n:], key, value, attn_mask=attention_mask,
                                            scale=scaling, enable_gqa=gqa)
    return torch.cat([ordinary, memory], 2).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPL, encoder_attention)


def encoder_inputs(lengths: Sequence[int], num_mem: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Which keys each position sees (B, L, L) bool, position ids (B, L), slots per row; L = max(n) + M.

    Padding and unused slots only see themselves, so no row is fully masked
    (that would give NaN) and nothing real ever sees them. Only the memory rows
    of this mask reach the attention; the ordinary rows are plain causal.
    """
    n_max, m = max(lengths), num_mem
    length = n_max + m
    allowed = torch.zeros(len(lengths), length, length, dtype=torch.bool)
    pos = torch.zeros(len(lengths), length, dtype=torch.long)
    slots = []
    diag = torch.arange(length)
    allowed[:, diag, diag] = True
    for b, n in enumerate(lengths):
        allowed[b, :n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        pos[b, :n_max] = torch.arange(n_max)
        s = slots_for(n, m)
        for i, c in enumerate(visible_prefix(n, s)):
            allowed[b, n_max + i, :c] = True
            pos[b, n_max + i] = c
        slots.append(s)
    return allowed.to(device), pos.to(device), slots


@dataclass
class Ordinary:
    """A batch of segments after the frozen pass (memory mode).

    ids (B, n) padded on the right; lengths: real tokens per row; keys, values (layers, B, n, kv, hd): keys
    pre-RoPE, exactly what the plain model's k_proj/v_proj give; cache: the same keys rotated to positions
    0..n-1 and the values, as the memory tokens read them.
    """

    ids: torch.Tensor
    lengths: list[int]
    keys: torch.Tensor
    values: torch.Tensor
    cache: DynamicCache


def kv_shape(lm) -> tuple[int, int]:
    """(kv heads, head dim) of the base model."""
    cfg = lm.model.config
    return cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


class Encoder:
    """Compresses token segments into a ``Memory`` with a base model and its UIO adapter."""

    def __init__(self, adapter: UIOAdapter, batch_size: int = 4):
        self.adapter, self.lm, self.batch_size = adapter, adapter.lm, batch_size

    @property
    def config(self):
        return self.adapter.config

    def compress(self, segments: Sequence[Sequence[int]], segment_ids: Sequence[int] | None = None,
                 token_spans: Sequence[tuple[int, int]] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Memory:
        """Memories of ``segments`` (token id lists of at most l tokens), in order, batched."""
        if not segments:
            raise ValueError("nothing to compress")
        too_long = [len(s) for s in segments if len(s) > self.config.segment_len or len(s) == 0]
        if too_long:
            raise ValueError(f"segments must have 1..{self.config.segment_len} tokens, got {too_long[:3]}")
        ids = list(segment_ids) if segment_ids is not None else list(range(len(segments)))
        spans = list(token_spans) if token_spans is not None else []
        parts = []
        for start in range(0, len(segments), self.batch_size):
            batch = segments[start:start + self.batch_size]
            with torch.inference_mode():
                keys, values, slots = self.forward(batch)
            parts.append(Memory(keys, values, ids[start:start + len(batch)], slots,
                                spans[start:start + len(batch)], self.adapter.fingerprint,
                                self.config.ratio))
            if progress:
                progress(min(start + self.batch_size, len(segments)), len(segments))
        return Memory.concat(parts)

    def _ids(self, batch: Sequence[Sequence[int]] | torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        if isinstance(batch, torch.Tensor):  # training: (B, n) full segments, already a tensor
            return batch, [batch.shape[1]] * batch.shape[0]
        lengths = [len(s) for s in batch]
        pad = self.lm.tokenizer.pad_token_id or 0
        ids = torch.full((len(batch), max(lengths)), pad, dtype=torch.long)
        for b, s in enumerate(batch):
            ids[b, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        return ids, lengths

    def forward(self, batch: Sequence[Sequence[int]] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """One batch: returns keys, values (layers, total slots, kv_heads, head_dim) and slots per row.

        Gradients flow when called with grad enabled (training); compress() runs it without.
        """
        if self.adapter.mode == "memory":
            keys, values, slots = self.memories(self.ordinary(batch))
            keep = [keys[:, b, :s] for b, s in enumerate(slots)]
            keepv = [values[:, b, :s] for b, s in enumerate(slots)]
            return torch.cat(keep, 1), torch.cat(keepv, 1), slots
        lm, m = self.lm, self.config.num_mem
        dev = lm.device
        ids, lengths = self._ids(batch)
        n_max = max(lengths)
        net = body(lm)
        tokens = net.embed_tokens(ids.to(dev))
        mem = self.adapter.mem_embedding.to(tokens.dtype).expand(len(lengths), m, -1)
        embeds = torch.cat([tokens, mem], dim=1)
        allowed, pos, slots = encoder_inputs(lengths, m, dev)
        memory_rows = allowed[:, None, n_max:]  # (B, 1, M, L)

        captured: list[torch.Tensor] = []

        def grab(_module, _inputs, output):
            captured.append(output[:, n_max:])  # the memory tokens, as k_proj/v_proj see them

        hooks = [layer.input_layernorm.register_forward_hook(grab) for layer in net.layers]
        try:
            with self.adapter.encoding(), attention_implementation(lm.model, ATTN_IMPL):
                # A 4D mask is passed through untouched by transformers' mask preparation.
                net(inputs_embeds=embeds, attention_mask=memory_rows, position_ids=pos, use_cache=False,
                    uio_ordinary=n_max)
        finally:
            for h in hooks:
                h.remove()
        keys, values = self._transfer(captured)
        keep = [keys[:, b, :s] for b, s in enumerate(slots)]
        keepv = [values[:, b, :s] for b, s in enumerate(slots)]
        return torch.cat(keep, 1), torch.cat(keepv, 1), slots

    def _transfer(self, captured: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer memory hidden states (B, M, hidden) -> keys, values (layers, B, M, kv, hd)."""
        kv, hd = kv_shape(self.lm)
        ks, vs = zip(*(self.adapter.transfer(i, h) for i, h in enumerate(captured)))
        return torch.stack(ks).unflatten(-1, (kv, hd)), torch.stack(vs).unflatten(-1, (kv, hd))

    # -- memory mode: two passes ------------------------------------------------------------------------
    def ordinary(self, batch: Sequence[Sequence[int]] | torch.Tensor) -> Ordinary:
        """The frozen pass over the ordinary tokens: their pre-RoPE keys, values and rotated cache, no gradient.

        Right padding needs no mask: attention is causal, so real tokens never see it, and no memory
        slot is allowed to read it (``encoder_inputs``).
        """
        lm = self.lm
        ids, lengths = self._ids(batch)
        ids = ids.to(lm.device)
        net = body(lm)
        grabbed_k: list[torch.Tensor] = []
        grabbed_v: list[torch.Tensor] = []
        hooks = []
        for layer in net.layers:
            attn = layer.self_attn
            k_src = getattr(attn, "k_norm", None) or attn.k_proj  # pre-RoPE keys (a k_norm where a model has one)
            hooks.append(k_src.register_forward_hook(lambda _m, _i, o: grabbed_k.append(o)))
            hooks.append(attn.v_proj.register_forward_hook(lambda _m, _i, o: grabbed_v.append(o)))
        cache = DynamicCache(config=lm.model.config)
        grad = torch.no_grad() if not torch.is_inference_mode_enabled() else nullcontext()
        try:
            with grad:
                pos = torch.arange(ids.shape[1], device=lm.device)[None].expand(ids.shape[0], -1)
                net(input_ids=ids, past_key_values=cache, use_cache=True, position_ids=pos)
        finally:
            for h in hooks:
                h.remove()
        kv, hd = kv_shape(lm)
        b, n = ids.shape
        keys = torch.stack([k.reshape(b, n, kv, hd) for k in grabbed_k])
        values = torch.stack([v.reshape(b, n, kv, hd) for v in grabbed_v])
        return Ordinary(ids, lengths, keys, values, cache)

    def memories(self, ordinary: Ordinary) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The <mem> tokens alone, encoder LoRA on, reading ``ordinary``'s cache: keys, values
        (layers, B, M, kv, hd) (rows with fewer slots carry unused ones at the end) and slots per row.

        Slot i sits at position c_i and reads ordinary tokens [0, c_i) and itself, as in the one-pass
        encoder, so at a zero encoder LoRA both modes give the same memories.
        """
        lm, m = self.lm, self.config.num_mem
        dev = lm.device
        lengths, n_max = ordinary.lengths, ordinary.ids.shape[1]
        allowed, pos, slots = encoder_inputs(lengths, m, dev)
        memory_rows = allowed[:, None, n_max:]  # (B, 1, M, n + M): [ordinary keys | memory keys]
        cache = DynamicCache(config=lm.model.config)  # a copy: ordinary.cache stays the segment's alone
        for i, layer in enumerate(ordinary.cache.layers):
            cache.update(layer.keys, layer.values, i)
        net = body(lm)
        embeds = self.adapter.mem_embedding.to(lm.dtype).expand(len(lengths), m, -1)
        captured: list[torch.Tensor] = []
        hooks = [layer.input_layernorm.register_forward_hook(lambda _m, _i, o: captured.append(o))
                 for layer in net.layers]
        try:
            with self.adapter.encoding():
                net(inputs_embeds=embeds, attention_mask=memory_rows, position_ids=pos[:, n_max:],
                    past_key_values=cache, use_cache=True)
        finally:
            for h in hooks:
                h.remove()
        if self.adapter.base == "none":
            keys, values = self._transfer(captured)
            return keys, values, slots
        kv, hd = kv_shape(lm)
        dk, dv = zip(*(self.adapter.transfer_delta(i, h) for i, h in enumerate(captured)))
        base_k, base_v = self.base_slots(ordinary, slots)
        return (base_k + torch.stack(dk).unflatten(-1, (kv, hd)).to(base_k.dtype),
                base_v + torch.stack(dv).unflatten(-1, (kv, hd)).to(base_v.dtype), slots)

    def base_slots(self, ordinary: Ordinary, slots: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The base method's slots (layers, B, M, kv, hd), taken from the ordinary pass without gradient.

        kvzip: KVzip's scores (its repeat pass over the segment's cache), top ``slots`` per layer and KV head
        (first n_sink tokens forced), in document order; strided: the token just before each slot's c_i.
        """
        from uio.compress.base import gather_slots

        lm, m = self.lm, self.config.num_mem
        layers, _, _, kv, hd = ordinary.keys.shape
        out_k = ordinary.keys.new_zeros(layers, len(slots), m, kv, hd)
        out_v = torch.zeros_like(out_k)
        grad = torch.no_grad() if not torch.is_inference_mode_enabled() else nullcontext()
        with grad:
            for b, (n, s) in enumerate(zip(ordinary.lengths, slots)):
                keys, values = ordinary.keys[:, b, :n], ordinary.values[:, b, :n]
                if self.adapter.base == "strided":
                    pos = torch.tensor([c - 1 for c in visible_prefix(n, s)], device=keys.device)
                    index = pos[None, None].expand(layers, kv, -1)
                else:
                    from uio.compress.base import Prefill
                    from uio.compress.kvzip import KVzipCompressor
                    from uio.decoder import cache_from

                    comp = KVzipCompressor(ratio=self.config.ratio)
                    pre = Prefill(ordinary.ids[b, :n], keys, values, cache_from(lm, keys[:, None], values[:, None]))
                    index = comp.select(comp.score(lm, pre).float(), s)
                out_k[:, b, :s] = gather_slots(keys, index)
                out_v[:, b, :s] = gather_slots(values, index)
        return out_k, out_v
