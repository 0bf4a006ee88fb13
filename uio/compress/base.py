"""The compressor interface: a batch of segments -> a ``uio.memory.Memory`` the decoder can read.

A compressor is a small ``@dataclass`` (one per method, one file each, in the
manner of NVIDIA kvpress): its fields are its parameters, ``name`` and
``version`` are class constants, and ``compress`` is the only call. Every
memory records ``identity(compressor, lm)``, a sha256 over the method, its
parameters and the base model, so ``Memory.load(expect_fingerprint=...)``
refuses memories another compressor (or another model) made.

Training-free methods share ``ScoringCompressor``: prefill the segment alone
(segments are independent, as in the UIO encoder) -> one score per (layer,
KV head, token) -> the first ``n_sink`` tokens always win -> top-k per head ->
gather the pre-RoPE keys and the values of the kept tokens in their original
order. Subclasses only write ``score`` (and ``observe`` when they need the
prefill's queries).

Slot rule (all scoring methods): a segment of ``n`` tokens keeps
``slots_at_ratio(n, ratio) = ceil(n / ratio)`` slots per layer and KV head
(at least 1, at most n): a full 1,024-token segment keeps 128 at 8x and 32 at
32x, exactly the UIO encoder's M; a short final segment keeps its own share
instead of UIO's ``min(M, n)``, so a document's memory is never more than
1/ratio of it (rounded up per segment). With ``share > 1`` (Tome's default for
KVzip and kvzip-fast, ``Config.memory_share``) a group of segments keeps the sum
of those budgets and splits it by score (``share_budget``): per segment the
count varies, per layer and KV head within a segment it does not.

Heads keep different tokens: slot j of head h and slot j of head h' may come
from different source tokens. The decoder places slot j at position j for
every head (``uio.decoder.build_cache``), so that is harmless.
"""
from __future__ import annotations

import hashlib
import json
import math
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from typing import Callable, ClassVar, ContextManager, Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from uio.adapter import base_fingerprint, body
from uio.attention import attention_implementation
from uio.memory import Memory
from uio.model import LoadedModel

Progress = Callable[[int, int], None]
ATTN_IMPL = "tome_compress"
AUTO_POOL = -1  # ScoringCompressor.pool: pool at high ratios only
HIGH_RATIO, HIGH_RATIO_POOL = 32, 3  # measured: 32x pass keys kept far more often pooled over 3; 8x QA not


def slots_at_ratio(n_tokens: int, ratio: int) -> int:
    """Slots a segment of ``n_tokens`` keeps at ``ratio``: ceil(n / ratio), within [1, n]."""
    if n_tokens < 1 or ratio < 1:
        raise ValueError(f"need n_tokens >= 1 and ratio >= 1, got {n_tokens}, {ratio}")
    return max(1, min(n_tokens, math.ceil(n_tokens / ratio)))


def storage_dtype(lm: LoadedModel, store: str = "16bit") -> torch.dtype:
    """Memories are stored in 16 bits: bf16 for a bf16 model, fp16 otherwise (fp32 and fp16 compute).

    ``store="model"`` keeps the model's dtype (exactness tests). The decoder casts back on load.
    """
    if store == "model":
        return lm.dtype
    if store != "16bit":
        raise ValueError(f"store must be '16bit' or 'model', not {store!r}")
    return torch.bfloat16 if lm.dtype == torch.bfloat16 else torch.float16


def model_shape(lm: LoadedModel) -> tuple[int, int, int, int]:
    """(layers, query heads, kv heads, head_dim) of the base model."""
    c = lm.model.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, hd


_BASE_FP: dict[int, tuple[weakref.ref, str]] = {}


def model_fingerprint(lm: LoadedModel) -> str:
    """``uio.adapter.base_fingerprint``, cached per model object (it reads a weight sample; base models are
    frozen). A weak reference: the cache never keeps a model alive, and a new model at a reused id misses."""
    hit = _BASE_FP.get(id(lm.model))
    if hit is None or hit[0]() is not lm.model:
        hit = (weakref.ref(lm.model), base_fingerprint(lm))
        _BASE_FP[id(lm.model)] = hit
    return hit[1]


@dataclass
class Compressor:
    """A way to turn segments into memory slots. Subclasses are dataclasses; fields are parameters."""

    name: ClassVar[str] = "base"
    label: ClassVar[str] = ""  # what the UI shows (uio.compress.compressor_label); empty: the name
    version: ClassVar[str] = "1"
    # Whether Tome lets segments split one budget (``ScoringCompressor.share``, ``Config.memory_share``):
    # only where scores compare across segments (attention a reconstruction gives, KVzip and kvzip-fast);
    # StreamingLLM's recency would hand a group's budget to its last segment.
    shares: ClassVar[bool] = False
    ratio: int = 8

    def params(self) -> dict:
        """Every parameter that changes the memories (the fields other than ``ratio``), JSON-able."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ratio" and f.init
                and f.metadata.get("identity", True)}

    def identity(self, lm: LoadedModel) -> str:
        """sha256 over name, ratio, params, version and the base model's fingerprint (see ``identity``).
        Computed on the torch thread: it reads weights (``uio/torch_thread.py``)."""
        from uio.torch_thread import run_on_torch

        return run_on_torch(self._identity, lm)

    def _identity(self, lm: LoadedModel) -> str:
        doc = {"compressor": self.name, "version": self.version, "ratio": self.ratio, "params": self.params(),
               "model": model_fingerprint(lm)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def compress(self, lm: LoadedModel, token_lists: Sequence[Sequence[int]],
                 segment_ids: Sequence[int] | None = None,
                 token_spans: Sequence[tuple[int, int]] | None = None,
                 progress: Progress | None = None) -> Memory:
        """Memories of ``token_lists`` (one list of token ids per segment), in order.

        Returns a Memory with keys (pre-RoPE) and values (layers, sum(slots), kv_heads, head_dim) in 16 bits,
        ``slots`` per segment, ``fingerprint = identity(self, lm)`` and ``ratio = self.ratio``.
        """
        raise NotImplementedError


def identity(compressor: Compressor, lm: LoadedModel) -> str:
    """The fingerprint ``compressor``'s memories of ``lm`` carry (``Memory.fingerprint``).

    Scoring methods: sha256 over name, ratio, params, version and ``uio.adapter.base_fingerprint(lm)``,
    deterministic across processes (sorted JSON, never Python's ``hash``). The UIO encoder: its adapter's
    fingerprint.
    """
    return compressor.identity(lm)


# -- attention with a window onto the queries --------------------------------------------------------
Observer = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], None]


def causal_offset_mask(q_len: int, k_len: int, device: torch.device, dtype: torch.dtype = torch.float32
                       ) -> torch.Tensor:
    """(q_len, k_len) additive mask: query i (the last q_len positions) sees keys [0, k_len - q_len + i].

    Additive float, never bool: eager-style explicit attention with a bool 4D mask is silently wrong in
    transformers 5, and one convention everywhere avoids mixing them up.
    """
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None]
    return torch.zeros(q_len, k_len, dtype=dtype, device=device).masked_fill_(j > i + (k_len - q_len),
                                                                             float("-inf"))


def compress_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                       tome_observe: Observer | None = None, **kwargs):
    """SDPA attention that first hands the rotated queries and keys to ``tome_observe``.

    query (1, H, q, d), key/value (1, Hkv, k, d) with k >= q (the cache holds the earlier k - q positions).
    Batch 1 without padding, so the causal mask is built here (transformers passes none for a custom
    attention implementation).
    """
    if tome_observe is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    tome_observe(module, query, key)
    q_len, k_len = query.shape[2], key.shape[2]
    gqa = query.shape[1] != key.shape[1]
    if q_len == k_len:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=gqa)
    else:
        mask = causal_offset_mask(q_len, k_len, query.device, query.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPL, compress_attention)


@contextmanager
def observed_attention(lm: LoadedModel) -> Iterator[None]:
    """Route the model's attention through ``compress_attention`` inside the block.

    Like the UIO encoder, this switches the model's attention implementation, so the model must not
    answer questions from another thread meanwhile (ingestion holds the model).
    """
    with attention_implementation(lm.model, ATTN_IMPL):
        yield


def attention_logits(module: torch.nn.Module, query: torch.Tensor, keys: torch.Tensor,
                     mask: torch.Tensor | None, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """Explicit q·kᵀ·scale + mask, grouped by KV head, in ``dtype`` (None: the model's).

    query (1, H, q, d) rotated; keys (1, Hkv, k, d) rotated; mask (q, k) additive or None.
    Returns (Hkv, G, q, k) with G = H / Hkv query heads per KV head (GQA: query head h reads KV head h // G).
    """
    _, h, q_len, d = query.shape
    kv = keys.shape[1]
    q = query[0].reshape(kv, h // kv * q_len, d)
    # q·kᵀ in the model's dtype (bf16 matmuls are several times faster on CPUs that have them; kvpress
    # does the same), the mask and the softmax in float32.
    # (The scale goes on the small query, and the mask is added in place: each pass over the (H, q, k)
    # weights costs about as much as the matmul itself on a CPU.)
    logits = torch.bmm(q * module.scaling, keys[0].transpose(1, 2))
    logits = (logits if dtype is None else logits.to(dtype)).view(kv, h // kv, q_len, -1)
    if mask is not None:
        logits += mask
    return logits


def attention_probs(module: torch.nn.Module, query: torch.Tensor, keys: torch.Tensor,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(``attention_logits``): (Hkv, G, q, k) attention weights, float32."""
    return attention_logits(module, query, keys, mask).softmax(-1)


# -- the scoring methods' common part ----------------------------------------------------------------
@dataclass
class Prefill:
    """A segment after its prefill.

    ids (n,); keys, values (layers, n, kv_heads, head_dim): keys pre-RoPE, as k_proj (and a k_norm, if any)
    gives them; cache: the rotated segment KV, for passes that read the segment again (KVzip); observed:
    per layer, what ``ScoringCompressor.observe`` returned during the prefill (None where it returns None).
    """

    ids: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    cache: DynamicCache
    observed: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class ScoringCompressor(Compressor):
    """Prefill -> score (layers, kv_heads, n) -> sinks -> top-k per head -> gather pre-RoPE K and V."""

    n_sink: int = 4  # the first tokens are attention sinks: always kept (within the budget)
    store: str = "16bit"  # "16bit" (bf16 for a bf16 model, else fp16) or "model" (the model's dtype)
    # Odd kernel of an average pool over each head's scores before top-k (SnapKV's smoothing); 0 or 1: none;
    # AUTO_POOL: ``HIGH_RATIO_POOL`` at ratios of ``HIGH_RATIO`` and more, else none (``pool_kernel``).
    # A number or a made-up name spans several tokens, and 32 slots per head kept one by one lose digits:
    # pooled, a high-scoring token's neighbours come with it (docs/COMPRESSION.md, "Sixth run").
    pool: int = 0
    # Share of the budget any one window of ``span`` tokens may hold (0: no cap). At 32x a document's
    # opening takes over half of each head's slots (bench/depth0_probe.py) and starves what follows it.
    span_cap: float = 0.0
    span: int = 32
    # Segments that split one budget (1: each keeps its own ceil(n / ratio)): consecutive groups of ``share``
    # segments (by segment id: ``segment_id // share``) pool their slots and give each segment the share its
    # scores win (``share_budget``), as KVzip ranks a whole context rather than each chunk alone: a page of
    # filler gives its slots to the page that holds a pass key. Callers pass whole groups (``Tome.memory``
    # rounds its chunks up to a multiple of ``share``) so memories do not depend on how a document is chunked.
    share: int = 1
    share_floor: float = 0.25  # no segment of a group keeps under this fraction of its own ceil(n / ratio)

    def pool_kernel(self) -> int:
        """The pool kernel in effect (``pool`` resolved; 0 = none)."""
        if self.pool == AUTO_POOL:
            return HIGH_RATIO_POOL if self.ratio >= HIGH_RATIO else 0
        if self.pool < 0:
            raise ValueError(f"pool must be >= 0 or AUTO_POOL ({AUTO_POOL}), got {self.pool}")
        if self.pool > 1 and self.pool % 2 == 0:
            raise ValueError(f"pool must be an odd kernel size, got {self.pool}")
        return self.pool if self.pool > 1 else 0

    def params(self) -> dict:
        p = super().params()
        p.pop("pool", None)
        if self.pool_kernel():  # unpooled memories keep the identity they had before the option existed
            p["pool"] = self.pool_kernel()
        span_cap, span = p.pop("span_cap", 0.0), p.pop("span", 32)
        if span_cap:  # likewise: uncapped memories keep their identity
            p.update(span_cap=span_cap, span=span)
        share, floor = p.pop("share", 1), p.pop("share_floor", 0.25)
        if share > 1:  # likewise: per-segment budgets keep their identity
            p.update(share=share, share_floor=floor)
        return p

    # -- what subclasses write -------------------------------------------------------------------
    def observe(self, module: torch.nn.Module, query: torch.Tensor, keys: torch.Tensor):
        """Called per layer during the prefill with rotated query (1, H, n, d) and keys (1, Hkv, n, d)."""
        return None

    def score(self, lm: LoadedModel, pre: Prefill) -> torch.Tensor:
        """(layers, kv_heads, n) float: higher = keep."""
        raise NotImplementedError

    # -- the mechanical part ---------------------------------------------------------------------
    @torch.inference_mode()
    def compress(self, lm: LoadedModel, token_lists: Sequence[Sequence[int]],
                 segment_ids: Sequence[int] | None = None,
                 token_spans: Sequence[tuple[int, int]] | None = None,
                 progress: Progress | None = None,
                 hold: Callable[[], ContextManager] | None = None) -> Memory:
        """``Compressor.compress``; ``hold``: a context entered around each segment's model work (the caller's
        model lock, so a question waits one segment, not a whole group of ``share``)."""
        if not token_lists:
            raise ValueError("nothing to compress")
        if any(len(t) == 0 for t in token_lists):
            raise ValueError("empty segment")
        ids = list(segment_ids) if segment_ids is not None else list(range(len(token_lists)))
        spans = [tuple(s) for s in token_spans] if token_spans is not None else []
        out_dtype = storage_dtype(lm, self.store)
        keys, values, positions, slots = [], [], [], []
        done = (lambda i: progress(i, len(token_lists))) if progress else (lambda i: None)
        for k, v, index in self.compress_all(lm, token_lists, ids, hold or nullcontext, done):
            keys.append(k.to(out_dtype))
            values.append(v.to(out_dtype))
            positions.append(index.transpose(1, 2).to(torch.int32).cpu())  # (layers, slots, kv)
            slots.append(k.shape[1])
        return Memory(torch.cat(keys, 1), torch.cat(values, 1), ids, slots, spans, identity(self, lm), self.ratio,
                      torch.cat(positions, 1))

    def compress_all(self, lm: LoadedModel, token_lists: Sequence[Sequence[int]], segment_ids: Sequence[int],
                     hold: Callable[[], ContextManager] = nullcontext, done: Callable[[int], None] = lambda i: None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``compress_one`` for each segment in order; with ``share > 1``, each group of segments (same
        ``segment_id // share``) is scored whole, then its slots are split by ``share_budget``. ``done(i)``
        after the i-th segment's model work (progress, and a worker's heartbeat while a group is scored)."""
        if self.share < 1:
            raise ValueError(f"share must be >= 1, got {self.share}")
        if self.share == 1:
            for i, tokens in enumerate(token_lists):
                with hold():
                    out = self.compress_one(lm, tokens)
                done(i + 1)
                yield out
            return
        i = 0
        while i < len(token_lists):
            j = i
            while j < len(token_lists) and segment_ids[j] // self.share == segment_ids[i] // self.share:
                j += 1
            scored = []
            for tokens in token_lists[i:j]:
                with hold():
                    pre = self.prefill(lm, tokens)
                    scores = self.pooled(self.score(lm, pre).float())
                pre.cache = None  # only keys, values and scores are kept for the group's split
                scored.append((pre, scores))
                done(i + len(scored))
            budgets = share_budget([s for _, s in scored], [slots_at_ratio(p.n, self.ratio) for p, _ in scored],
                                   self.share_floor, self.sinks)
            for (pre, scores), k in zip(scored, budgets):
                yield self.keep(lm, pre, scores, k, pooled=True)
            i = j

    def compress_one(self, lm: LoadedModel, tokens: Sequence[int]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One segment -> kept keys (pre-RoPE), values (layers, slots, kv_heads, head_dim) in compute dtype,
        and the kept tokens' indices (layers, kv_heads, slots), ascending."""
        pre = self.prefill(lm, tokens)
        k = slots_at_ratio(pre.n, self.ratio)
        return self.keep(lm, pre, None if k == pre.n else self.score(lm, pre).float(), k)

    def keep(self, lm: LoadedModel, pre: Prefill, scores: torch.Tensor | None, k: int, pooled: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``k`` best of ``pre``'s tokens per head by ``scores`` (None: keep-all, k == n)."""
        if k == pre.n:  # keep-all: no scoring pass needed
            layers, _, kv, _ = model_shape(lm)
            return pre.keys, pre.values, torch.arange(pre.n, device=pre.keys.device).expand(layers, kv, -1)
        index = self.select(scores, k, pooled=pooled)
        return gather_slots(pre.keys, index), gather_slots(pre.values, index), index

    def select(self, scores: torch.Tensor, k: int, pooled: bool = False) -> torch.Tensor:
        """(layers, kv, n) scores -> (layers, kv, k) kept token indices, ascending (document order).

        The first ``sinks(k)`` tokens are forced in; ties are broken by topk's fixed order on the CPU
        (deterministic), and subclasses whose scores tie by design break ties themselves. ``pooled``: the
        scores are ``pooled()`` already (a copy this may change).
        """
        scores = scores if pooled else self.pooled(scores)
        scores[..., :self.sinks(k)] = float("inf")
        if self.span_cap:
            return capped_topk(scores, k, self.span, self.window_slots(k, scores.shape[-1])).sort(-1).values
        return scores.topk(k, dim=-1).indices.sort(-1).values

    def window_slots(self, k: int, n: int) -> int:
        """Slots one window of ``span`` tokens may hold: ``span_cap`` of the budget, but never fewer than the
        sinks or than the full windows need between them to fill the budget (so a short segment is uncapped)."""
        if not 0 < self.span_cap <= 1 or self.span < 1:
            raise ValueError(f"span_cap must be in (0, 1] and span >= 1, got {self.span_cap}, {self.span}")
        full = max(1, n // self.span)
        return min(self.span, max(math.ceil(self.span_cap * k), self.sinks(k), math.ceil(k / full)))

    def mass(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores on a scale where averaging means something (attention mass); subclasses with log scores
        override. Must be monotone: without pooling the choice is the raw scores'."""
        return scores

    def pooled(self, scores: torch.Tensor) -> torch.Tensor:
        """A copy of ``scores`` (layers, kv, n), average-pooled over ``pool_kernel()`` tokens (``mass`` scale)."""
        size = self.pool_kernel()
        if not size:
            return scores.clone()
        layers, kv, n = scores.shape
        m = self.mass(scores.float()).reshape(layers * kv, 1, n)
        m = F.avg_pool1d(m, size, stride=1, padding=size // 2, count_include_pad=False)
        return m.reshape(layers, kv, n)

    def sinks(self, k: int) -> int:
        """Sink tokens forced into a budget of ``k`` slots: ``n_sink``, but at most an eighth of the budget.

        A short final segment (a PDF's last 46 tokens keep 6 slots at 8x) would otherwise spend most of its
        slots on its first tokens and lose what it says (version 2; version 1 forced min(n_sink, k)).
        """
        return min(self.n_sink, k // 8)

    def prefill(self, lm: LoadedModel, tokens: Sequence[int]) -> Prefill:
        """Run the segment alone through the model (positions 0..n-1), capturing pre-RoPE K, V."""
        net = body(lm)
        ids = torch.as_tensor(list(tokens), dtype=torch.long, device=lm.device)
        grabbed_k: list[torch.Tensor] = []
        grabbed_v: list[torch.Tensor] = []
        observed: list = []
        hooks = []
        for layer in net.layers:
            attn = layer.self_attn
            # Pre-RoPE keys are what enters apply_rotary_pos_emb: k_proj's output, or k_norm's where a model
            # normalises keys (Qwen3); the hook sees the (1, n, kv*hd) / (1, n, kv, hd) tensor either way.
            k_src = getattr(attn, "k_norm", None) or attn.k_proj
            hooks.append(k_src.register_forward_hook(lambda _m, _i, o: grabbed_k.append(o)))
            hooks.append(attn.v_proj.register_forward_hook(lambda _m, _i, o: grabbed_v.append(o)))
        cache = DynamicCache(config=lm.model.config)
        try:
            with observed_attention(lm):
                net(input_ids=ids[None], past_key_values=cache, use_cache=True,
                    position_ids=torch.arange(len(ids), device=lm.device)[None],
                    tome_observe=lambda m, q, k: observed.append(self.observe(m, q, k)))
        finally:
            for h in hooks:
                h.remove()
        layers, _, kv, hd = model_shape(lm)
        keys = torch.stack([k.reshape(len(ids), kv, hd) for k in grabbed_k])  # (layers, n, kv, hd)
        values = torch.stack([v.reshape(len(ids), kv, hd) for v in grabbed_v])
        return Prefill(ids, keys, values, cache, observed)


def share_budget(scores: Sequence[torch.Tensor], bases: Sequence[int], floor: float,
                 sinks: Callable[[int], int]) -> list[int]:
    """Slots per segment of a group that shares ``sum(bases)`` slots per head.

    scores: per segment (layers, kv, n_i), on one scale (``pooled``). Each layer and KV head ranks the group's
    tokens together (sinks left out: every segment keeps its own) and keeps as many as the group's budget
    holds; a segment's share is the mean over heads of the tokens it won, at least ceil(floor * base) (what
    the floors add is taken from the others in proportion to their gain above their floors), rounded so the
    shares add up to the budget exactly (largest remainders; ties to the earlier segment).
    """
    sizes = [int(s.shape[-1]) for s in scores]
    total = sum(bases)
    lo = [min(n, max(math.ceil(floor * b), 1)) for n, b in zip(sizes, bases)]
    if total <= sum(lo) or len(scores) == 1:
        return list(bases)
    forced = [sinks(b) for b in bases]
    free = [s.clone() for s in scores]
    for f, c in zip(free, forced):
        f[..., :c] = float("-inf")
    flat = torch.cat(free, -1)  # (layers, kv, sum n)
    top = flat.topk(total - sum(forced), dim=-1).indices
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    won = F.one_hot(owner[top], len(sizes)).sum(-2).float().mean((0, 1))  # mean over heads, per segment
    want = [float(w) + c for w, c in zip(won.tolist(), forced)]
    # Floors are paid by the others, in proportion to what they won above their own floors. want_i <= n_i
    # (a head cannot win more tokens than a segment has) and the scale is <= 1, so no share passes n_i.
    surplus = [max(w - a, 0.0) for w, a in zip(want, lo)]
    scale = (total - sum(lo)) / sum(surplus)  # sum(want) == total > sum(lo), so sum(surplus) > 0
    share = [a + scale * x for a, x in zip(lo, surplus)]
    hi = sizes
    out = [min(max(math.floor(x), lo[i]), hi[i]) for i, x in enumerate(share)]
    # Whole slots (sum(lo) <= total <= sum(hi), so this ends): the largest remainder gains, the smallest loses.
    while sum(out) < total:
        out[max((i for i in range(len(out)) if out[i] < hi[i]), key=lambda i: (share[i] - out[i], -i))] += 1
    while sum(out) > total:
        out[min((i for i in range(len(out)) if out[i] > lo[i]), key=lambda i: (share[i] - out[i], -i))] -= 1
    return out


def capped_topk(scores: torch.Tensor, k: int, span: int, cap: int) -> torch.Tensor:
    """(..., n) scores -> (..., k) indices of the k best with at most ``cap`` from each window
    [j*span, (j+1)*span): best first, a token over its window's cap is passed over for the next best.
    Needs cap * (n // span) >= k (``ScoringCompressor.window_slots`` ensures it)."""
    n = scores.shape[-1]
    order = scores.argsort(dim=-1, descending=True, stable=True)
    hot = F.one_hot(order // span, -(-n // span))  # (..., n, windows): each ranked token's window
    rank = (hot.cumsum(-2) * hot).sum(-1) - 1  # its rank inside its window, in score order
    allowed = rank < cap
    pick = allowed & (allowed.cumsum(-1) <= k)
    return order[pick].view(*scores.shape[:-1], k)


def gather_slots(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (layers, n, kv, hd), index (layers, kv, k) -> (layers, k, kv, hd): each head's kept tokens."""
    xt = x.transpose(1, 2)  # (layers, kv, n, hd)
    out = xt.gather(2, index[..., None].expand(-1, -1, -1, x.shape[-1]))
    return out.transpose(1, 2).contiguous()
