"""Memories + recent tokens -> the frozen base model's cache, logits and streamed answers.

The key sequence is [memories of the chosen segments, in the order given |
recent raw tokens | new tokens]. Memories are stored before RoPE; ``build_cache``
rotates them to positions 0..m-1, so any subset of memories from any documents
can be combined; ``build_context`` also reads text between them (the chat
template around inline memories) and can space slots as their source tokens
were (``Memory.positions``). Text that opens a cache (compressed mode's
instructions) is read once per model and kept (``uio/head_kv.py``). A loaded ``Memory`` is never modified: the cache
holds rotated copies of its keys and views of its values, and generation and
cache policies only ever replace those tensors (append, gather), never write
into them.
"""
from __future__ import annotations

import importlib
import math
import threading
from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from uio.adapter import body
from uio.encoder import Encoder
from uio.generate import Generation, stream
from uio.memory import Memory, MemoryMismatch
from uio.model import LoadedModel


class WindowExceeded(ValueError):
    """Memories + prompt + answer do not fit the base model's position window."""


def rotate_keys(lm: LoadedModel, keys: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Pre-RoPE keys (..., slots, kv_heads, hd) -> rotated (..., kv_heads, slots, hd) at start.. .

    One batched op over all leading dimensions (layers, batch), with the model's own rotary embedding.
    """
    lead = keys.shape[:-3]
    k = keys.transpose(-3, -2)
    k = k.reshape(-1, *k.shape[-3:])  # (N, kv, slots, hd)
    positions = torch.arange(start, start + k.shape[2], device=k.device)[None]
    cos, sin = body(lm).rotary_emb(k, positions)
    apply = importlib.import_module(type(lm.model).__module__).apply_rotary_pos_emb
    _, rotated = apply(k, k, cos, sin)
    return rotated.reshape(*lead, *rotated.shape[1:])


def cache_from(lm: LoadedModel, keys: torch.Tensor, values: torch.Tensor) -> DynamicCache:
    """A cache from keys/values (layers, batch, slots, kv_heads, hd), keys pre-RoPE, at positions 0.. .

    Differentiable: training builds it from memory leaves that require grad.
    """
    rotated = rotate_keys(lm, keys)  # (layers, batch, kv, slots, hd)
    vals = values.transpose(-3, -2)
    cache = DynamicCache(config=lm.model.config)
    for layer in range(rotated.shape[0]):
        cache.update(rotated[layer], vals[layer], layer)
    return cache


def check_window(lm: LoadedModel, memory_slots: int, prompt_tokens: int, new_tokens: int) -> None:
    need = memory_slots + prompt_tokens + new_tokens
    if need > lm.window:
        raise WindowExceeded(f"{memory_slots} memory slots + {prompt_tokens} prompt tokens + {new_tokens} new "
                             f"tokens = {need} exceeds {lm.name}'s window of {lm.window}; select fewer "
                             "segments or books")


def check_fingerprints(memories: Sequence[Memory], fingerprint: str | None) -> None:
    """Refuses memories made by another adapter or compressor than ``fingerprint`` (None: any)."""
    for mem in memories:
        if fingerprint is not None and mem.fingerprint != fingerprint:
            raise MemoryMismatch(f"memories made by adapter {mem.fingerprint[:12]} cannot be used with "
                                 f"adapter {fingerprint[:12]}; re-ingest the document")


def join(memories: Sequence[Memory], fingerprint: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of several memories in order; refuses memories of another adapter."""
    check_fingerprints(memories, fingerprint)
    return torch.cat([m.keys for m in memories], 1), torch.cat([m.values for m in memories], 1)


def _rotate_into(out: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """out = RoPE(k), written in place: k*cos + rotate_half(k)*sin without the temporaries of rotate_half.

    The half-split ("rotate_half") convention of the Llama / Qwen2 / Mistral family;
    ``rotate_keys`` (the model's own function) is the reference it is tested against.
    """
    h = k.shape[-1] // 2
    torch.mul(k, cos, out=out)
    out[..., :h].addcmul_(k[..., h:], sin[..., :h], value=-1)
    out[..., h:].addcmul_(k[..., :h], sin[..., h:])


@torch.inference_mode()
def build_cache(lm: LoadedModel, memories: Sequence[Memory], fingerprint: str | None = None,
                head: Sequence[int] = ()) -> tuple[DynamicCache | None, int]:
    """A DynamicCache holding the memories at positions 0..m-1, and m. (None, 0) without memories (and head).

    ``head``: token ids of text before the memories, which then sit at h..h+m-1 (h = len(head)); its keys and
    values are read once per model and kept (``lm.head_kv``, ``uio/head_kv.py``).

    The answer path, so copies are counted: keys are joined only when there are
    several memories, rotated layer by layer (one batched op per layer, cos/sin
    computed once) straight into the buffer the cache keeps, and values go in
    as views of the loaded memory (the first forward's append makes the one copy
    a cache needs). A loaded ``Memory`` is never written to.
    """
    memories = [m for m in memories if m.num_slots]
    h = len(head)
    if not memories and not h:
        return None, 0
    cache = DynamicCache(config=lm.model.config)
    if h:
        _read_head(lm, body(lm), cache, list(head), 0)
    if not memories:
        return cache, h
    keys, values = join(memories, fingerprint)  # (layers, slots, kv, hd); no copy for one memory
    keys, values = keys.to(lm.device, lm.dtype), values.to(lm.device, lm.dtype)
    layers, m, kv, hd = keys.shape
    positions = torch.arange(h, h + m, device=lm.device)[None]
    cos, sin = body(lm).rotary_emb(values[:1], positions)  # (1, m, hd), the same for every layer
    cos, sin = cos[0, None], sin[0, None]  # (1, m, hd): broadcast over kv heads
    rotated = torch.empty(layers, 1, kv, m, hd, dtype=lm.dtype, device=lm.device)
    for layer in range(layers):
        _rotate_into(rotated[layer, 0], keys[layer].transpose(0, 1), cos, sin)
        v = values[layer].transpose(0, 1)[None]  # (1, kv, m, hd) view
        slot = cache.layers[layer]
        if h or type(slot) is not DynamicLayer:  # after a head; sliding-window layers keep their own rules
            cache.update(rotated[layer], v, layer)
            continue
        # DynamicCache.update would concatenate onto an empty tensor: a full copy for nothing.
        slot.lazy_initialization(rotated[layer], v)
        slot.keys, slot.values = rotated[layer], v
    return cache, h + m


POSITIONS = ("consecutive", "spaced")


def _layout(parts: Sequence, positions: str, room: int | None) -> tuple[list, int]:
    """Each part's positions relative to where it starts, and its length in positions; the total span.

    consecutive: a memory's slots at 0..m-1 (as ``build_cache``); spaced: each slot where its source token
    sat, segments of a memory one after another (a memory spans its segments' tokens). Text: 0..n-1.
    Where the spaced span of the memories would not fit ``room`` positions, they are scaled down into it
    (text parts keep their length).
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, not {positions!r}")
    laid, text_len, mem_span = [], 0, 0
    for part in parts:
        if not isinstance(part, Memory):
            laid.append((None, len(part)))
            text_len += len(part)
            continue
        if positions == "consecutive":
            pos = torch.arange(part.num_slots, dtype=torch.float64)[None, :, None].expand(
                part.keys.shape[0], -1, part.keys.shape[2])
            span = part.num_slots
        else:
            lengths = part.segment_lengths()
            firsts = torch.tensor([0] + lengths[:-1], dtype=torch.float64).cumsum(0)  # where each segment starts
            start = firsts.repeat_interleave(torch.tensor(part.slots))
            pos = part.source_positions().to(torch.float64) + start[None, :, None]
            span = sum(lengths)
        laid.append((pos, span))
        mem_span += span
    if positions == "spaced" and room is not None and mem_span > max(1, room - text_len):
        f = max(1, room - text_len) / mem_span  # keep the selection inside the model's window
        laid = [(None, n) if pos is None else ((pos * f).floor(), max(1, math.ceil(n * f))) for pos, n in laid]
    return laid, sum(n for _, n in laid)


@torch.inference_mode()
def build_context(lm: LoadedModel, parts: Sequence, fingerprint: str | None = None, positions: str = "consecutive",
                  room: int | None = None, reuse_head: bool = False) -> tuple[DynamicCache, int]:
    """A cache holding ``parts`` in order (memories and token ids of text), and its length.

    Text parts are read by the model (attending to everything before them), memories are rotated into
    place. RoPE only sees relative positions, so the whole layout is shifted to end where the cache ends:
    the prompt that follows at position ``len(cache)`` (what ``generate`` assumes) then sits right after
    the last part's span, the head's first positions may be negative. With only memories and positions
    "consecutive" this is ``build_cache``. ``room``: the most positions the parts may span (spaced).
    ``reuse_head``: a leading text part's keys and values are kept in ``lm.head_kv`` and taken from there the
    next time the same tokens open a cache at the same position (``uio/head_kv.py``).
    """
    parts = [p for p in parts if (p.num_slots if isinstance(p, Memory) else len(p))]
    check_fingerprints([p for p in parts if isinstance(p, Memory)], fingerprint)
    laid, span = _layout(parts, positions, room)
    held = sum(p.num_slots if isinstance(p, Memory) else len(p) for p in parts)
    at = held - span  # true position 0 sits here, so the span ends at ``held``
    cache = DynamicCache(config=lm.model.config)
    net, length = body(lm), 0
    for part, (pos, n) in zip(parts, laid):
        if isinstance(part, Memory):
            _append_memory(lm, cache, part, (pos + at).to(torch.long))
            length += part.num_slots
        elif length == 0 and reuse_head:  # nothing before it: its keys and values depend on it alone
            _read_head(lm, net, cache, list(part), at)
            length += n
        else:
            _read_text(lm, net, cache, list(part), at, length)
            length += n
        at += n
    return cache, length


def _read_text(lm: LoadedModel, net, cache: DynamicCache, ids: list[int], at: int, length: int) -> None:
    """The model reads text ``ids`` at positions ``at``.. into ``cache`` after its ``length`` entries."""
    n = len(ids)
    net(input_ids=torch.tensor([ids], device=lm.device), past_key_values=cache, use_cache=True,
        position_ids=torch.arange(at, at + n, device=lm.device)[None],
        cache_position=torch.arange(length, length + n, device=lm.device))


def _read_head(lm: LoadedModel, net, cache: DynamicCache, ids: list[int], at: int) -> None:
    """Put the keys and values of text ``ids`` at positions ``at``.. into the empty ``cache``: from
    ``lm.head_kv`` where read before, else read by the model (and kept)."""
    key = lm.head_kv.key(ids, at)
    layers = lm.head_kv.get(key)
    if layers is None:
        _read_text(lm, net, cache, ids, at, 0)
        lm.head_kv.put(key, [(layer.keys, layer.values) for layer in cache.layers])
        return
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)


def _append_memory(lm: LoadedModel, cache: DynamicCache, mem: Memory, positions: torch.Tensor) -> None:
    """Rotate ``mem``'s keys to ``positions`` (layers, slots, kv) and append them and the values to ``cache``."""
    keys, values = mem.keys.to(lm.device, lm.dtype), mem.values.to(lm.device, lm.dtype)
    rope = body(lm).rotary_emb
    for layer in range(keys.shape[0]):
        k = keys[layer].transpose(0, 1)  # (kv, m, hd)
        cos, sin = rope(values[:1], positions[layer].T.to(lm.device))  # (kv, m, hd): each head its own
        rotated = torch.empty_like(k)
        _rotate_into(rotated, k, cos, sin)
        cache.update(rotated[None], values[layer].transpose(0, 1)[None], layer)


@torch.inference_mode()
def logits_over_memories(lm: LoadedModel, memories: Sequence[Memory], input_ids: torch.Tensor,
                         fingerprint: str | None = None) -> torch.Tensor:
    """Logits of the frozen base model for ``input_ids`` (1, n) read after the memories."""
    cache, m = build_cache(lm, memories, fingerprint)
    check_window(lm, m, input_ids.shape[1], 0)
    pos = torch.arange(m, m + input_ids.shape[1], device=lm.device)[None]
    out = lm.model(input_ids=input_ids.to(lm.device), past_key_values=cache, position_ids=pos,
                   cache_position=pos[0], use_cache=cache is not None)
    return out.logits


def stream_over_memories(lm: LoadedModel, memories: Sequence[Memory], messages: list[dict],
                         max_new_tokens: int = 256, temperature: float = 0.0,
                         stop: threading.Event | None = None, fingerprint: str | None = None) -> Generation:
    """Answer chat ``messages`` while attending to ``memories``, streaming the text."""
    cache, m = build_cache(lm, memories, fingerprint)
    return stream(lm, messages, past_key_values=cache, prefix_len=m, max_new_tokens=max_new_tokens,
                  temperature=temperature, stop=stop)


class IncrementalReader:
    """Reads a token stream of any length with a bounded cache.

    Raw tokens accumulate until there are l of them; then they are compressed
    into M memory slots and dropped. At any time the state is
    ``memory`` (all compressed segments) + ``raw`` (< l recent tokens).
    """

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.parts: list[Memory] = []
        self.raw: list[int] = []
        self.read = 0  # tokens consumed so far

    def feed(self, token_ids: Sequence[int]) -> None:
        self.raw.extend(int(t) for t in token_ids)
        l = self.encoder.config.segment_len
        while len(self.raw) >= l:
            seg, self.raw = self.raw[:l], self.raw[l:]
            self.parts.append(self.encoder.compress([seg], segment_ids=[len(self.parts)],
                                                    token_spans=[(self.read, self.read + l)]))
            self.read += l

    @property
    def memory(self) -> Memory | None:
        return Memory.concat(self.parts) if self.parts else None

    @torch.inference_mode()
    def cache(self) -> tuple[DynamicCache | None, int]:
        """The decoder cache: memories, then the raw tokens' K/V; and its length."""
        mems = [self.memory] if self.parts else []
        cache, m = build_cache(self.encoder.lm, mems)
        if not self.raw:
            return cache, m
        lm = self.encoder.lm
        ids = torch.tensor([self.raw], device=lm.device)
        pos = torch.arange(m, m + ids.shape[1], device=lm.device)[None]
        cache = cache if cache is not None else DynamicCache(config=lm.model.config)
        lm.model(input_ids=ids, past_key_values=cache, position_ids=pos, cache_position=pos[0], use_cache=True,
                 logits_to_keep=1)
        return cache, m + ids.shape[1]
