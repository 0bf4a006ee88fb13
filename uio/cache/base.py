"""The recent-cache policy interface, and the cache that really removes what a policy evicts.

A policy is a small dataclass that scores one layer's recent entries per KV head (everything after the
``prefix_len`` memory slots, which are never touched): ``score(layer, view) -> (H, L)``, higher stays.
``CachePolicy.keep`` does the mechanical part the policies share: the first ``sink`` recent positions
and the newest ``window`` ones are kept whatever their score, and each head keeps its best-scored
entries up to the budget. A policy that decides otherwise (the gate's calibrated threshold) overrides
``select`` only. A policy that needs to see the model run (H2O the attention given, the gate the layer
inputs) keeps that state itself, fed by ``before_attention`` / ``after_attention`` and realigned after
each eviction by ``reorder``: ``PolicyCache`` knows no policy by name.

``PolicyCache`` wraps a transformers ``DynamicCache``: after each prefill chunk or decode step it
gathers the kept entries into smaller tensors. Heads may keep different tokens, so each layer is padded
to its longest head and the pads are masked out of attention.

The per-layer masks and the policies' observations travel through forward hooks that act only when the
forward call carries ``tome_cache=<PolicyCache>``; other callers of the same model are unaffected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from transformers import DynamicCache


@dataclass
class LayerView:
    """One layer's recent cache as a policy sees it (batch 1); L = padded length, H = KV heads."""

    keys: torch.Tensor  # (H, L, hd), rotated
    values: torch.Tensor  # (H, L, hd)
    positions: torch.Tensor  # (H, L) absolute positions, -1 for pads
    seen: int  # recent tokens seen so far
    first_pos: int  # position of the first recent token (= prefix_len)

    @property
    def valid(self) -> torch.Tensor:
        return self.positions >= 0


def top_per_head(priority: torch.Tensor, k: int) -> torch.Tensor:
    """(H, L) bool marking each head's k largest entries (priority -inf never wins over a real one)."""
    k = min(max(k, 0), priority.shape[1])
    idx = priority.topk(k, dim=1).indices
    return torch.zeros_like(priority, dtype=torch.bool).scatter_(1, idx, True)


@dataclass
class CachePolicy:
    """Base of the policies. Keeps everything unless ``score`` gives priorities; ``target_eviction`` sets
    the budget (the share of the recent tokens seen that each head drops)."""

    target_eviction: float | None = None

    name: ClassVar[str] = "custom"  # the registry name (uio.cache.POLICIES); GenerationStats.policy
    label: ClassVar[str] = ""  # what the UI shows (uio.cache.policy_label); empty: the name
    # Nothing is ever evicted, so uio.generate.stream may skip PolicyCache: HF generate, one prefill.
    fast_path: ClassVar[bool] = False
    # after_attention reads this cache's per-layer masks (PolicyCache.layer_mask): build them every forward.
    needs_layer_masks: ClassVar[bool] = False
    # Its state can forget the newest tokens (``forget``), so uio.generate may verify drafted tokens and take the
    # rejected ones back (PolicyCache.truncate). False where the state cannot be rolled back (H2O's sums).
    drafts: ClassVar[bool] = True

    @classmethod
    def at(cls, eviction: float, **options) -> "CachePolicy":
        """The policy that evicts ``eviction`` (0..1) of the recent tokens; what resolve_policy builds."""
        return cls(target_eviction=eviction, **options)

    # ---- what a policy says --------------------------------------------------------------------
    def budget(self, seen: int) -> int | None:
        """Entries one head may hold after ``seen`` recent tokens; None: no fixed budget."""
        if self.target_eviction is None:
            return None
        return max(1, math.ceil(round((1.0 - self.target_eviction) * seen, 6)))  # round: 0.3 * 100 is 30

    def score(self, layer: int, view: LayerView) -> torch.Tensor | None:
        """(H, L) priority of each entry, higher stays (pads are ignored); None: keep everything."""
        return None

    def protected(self, budget: int | None) -> tuple[int, int]:
        """(sink, window): the first ``sink`` recent positions and the newest ``window`` positions are kept
        whatever their score; they count against the budget."""
        return 0, 0

    def select(self, candidates: torch.Tensor, k: int | None) -> torch.Tensor:
        """(H, L) bool: which candidates stay. ``candidates`` holds the scores, -inf where an entry is not
        one (pad or protected); ``k``: what the budget leaves per head after the protected entries,
        None without a budget. Each head's k best; override for another rule (a threshold)."""
        if k is None:
            return torch.ones_like(candidates, dtype=torch.bool)
        return top_per_head(candidates, k)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor:
        """(H, L) bool: which entries stay; pads are dropped whatever this says."""
        priority = self.score(layer, view)
        if priority is None:
            return view.valid
        budget = self.budget(view.seen)
        sink, window = self.protected(budget)
        pos, valid = view.positions, view.valid
        kept = valid & ((pos < view.first_pos + sink) | (pos >= view.first_pos + view.seen - window))
        candidates = priority.masked_fill(~valid | kept, float("-inf"))
        k = None if budget is None else budget - sink - window
        return (kept | self.select(candidates, k)) & valid

    # ---- what a policy sees (per-cache state; the defaults keep none) --------------------------
    def attach(self, cache: "PolicyCache") -> None:
        """A PolicyCache starts using this policy: reset per-cache state (a policy serves one cache at a time)."""

    def before_attention(self, cache: "PolicyCache", layer: int, hidden: torch.Tensor, position_embeddings) -> None:
        """Layer ``layer``'s attention is about to read ``hidden`` (1, q, D), the new tokens' (normed) inputs."""

    def after_attention(self, cache: "PolicyCache", layer: int, attn: torch.nn.Module) -> None:
        """Layer ``layer``'s attention ran: its cache layer holds the new tokens' K/V after the held ones."""

    def prepare(self, cache: "PolicyCache") -> None:
        """Called once before each eviction pass over the layers (e.g. to set a cache-wide threshold)."""

    def reorder(self, layer: int, take: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Layer ``layer``'s entries were gathered: ``take`` applies the same gather to (H, L) per-entry
        state (0 at new pads), so that state stays aligned with ``PolicyCache.positions``."""

    def forget(self, cache: "PolicyCache", n: int) -> None:
        """The newest ``n`` tokens (read by the last forward, not evicted or judged since) were taken back
        (``PolicyCache.truncate``): drop what was noted about them. Only where ``drafts`` is True."""


def kv_bytes(cache: DynamicCache | None, n_layers: int) -> list[int]:
    """Bytes of keys + values each layer of ``cache`` holds (pads included: real memory)."""
    out = []
    for layer in range(n_layers):
        cl = cache.layers[layer] if cache is not None and layer < len(cache.layers) else None
        if cl is None or not cl.is_initialized or cl.keys is None:
            out.append(0)
        else:
            out.append(cl.keys.numel() * cl.keys.element_size() + cl.values.numel() * cl.values.element_size())
    return out


class PolicyCache:
    """A DynamicCache plus, per layer, the positions of its recent entries; evicts what the policy says."""

    def __init__(self, model, policy: CachePolicy, cache: DynamicCache | None = None, prefix_len: int = 0):
        self.model, self.policy, self.prefix_len = model, policy, prefix_len
        cfg = model.config
        self.n_layers = cfg.num_hidden_layers
        self.kv_heads = cfg.num_key_value_heads
        self.heads = cfg.num_attention_heads
        self.cache = cache if cache is not None else DynamicCache(config=cfg)
        empty = torch.empty(self.kv_heads, 0, dtype=torch.long, device=model.device)
        self.positions = [empty.clone() for _ in range(self.n_layers)]
        self.seen = 0
        self.next_pos = prefix_len
        self._dtype, self._device = model.dtype, model.device  # model.device walks the parameters: once
        self._uniform = True  # every layer holds the same number of entries and no pads: one causal mask
        self._q = 0  # new tokens of the forward running now, when each layer builds its own mask (else 0)
        self._current: tuple[int, torch.Tensor] | None = None  # (layer, its mask) of the forward running now
        # Per layer, the additive mask (heads, held) over everything held, while it is known: the last row
        # of the previous forward's mask. Decoding then builds its mask with one cat instead of rebuilding it.
        self._held_masks: list[torch.Tensor | None] = [None] * self.n_layers
        install_hooks(model)
        policy.attach(self)

    # ---- sizes -----------------------------------------------------------------------------------
    def layer_len(self, layer: int) -> int:
        return self.prefix_len + self.positions[layer].shape[1]

    def kv_bytes_held(self) -> list[int]:
        """Bytes of keys + values each layer holds now (memories included, pads included: real memory)."""
        return kv_bytes(self.cache, self.n_layers)

    def eviction_rate(self) -> float:
        """Share of the recent tokens seen that are no longer held, over layers and heads."""
        if not self.seen:
            return 0.0
        held = sum(int((p >= 0).sum()) for p in self.positions)
        return 1.0 - held / (self.seen * self.n_layers * self.kv_heads)

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, **kwargs):
        """Run the model on new tokens (1, q) after everything held; returns the model output."""
        q = input_ids.shape[1]
        pos = torch.arange(self.next_pos, self.next_pos + q, device=input_ids.device)[None]
        per_layer = not self._uniform or self.policy.needs_layer_masks
        if per_layer:
            # Each layer builds its own mask as it starts (``layer_mask``) and drops the previous one:
            # one (heads, q, held + q) mask alive at a time, not one per layer (a 4,096-token chunk over
            # 8K held is ~1 GB per layer: all layers at once ran a 0.5B model out of memory).
            self._q, mask = q, None
        else:
            # No pads and equal lengths: one plain causal mask serves all layers. None at all for one token,
            # or when nothing is held yet: the model's own causal path (SDPA is_causal) is faster on CPU.
            empty = self.prefix_len == 0 and self.positions[0].shape[1] == 0
            mask = None if q == 1 or empty else self._mask(0, q)[:, :1]
        try:
            out = self.model(input_ids=input_ids, past_key_values=self.cache, position_ids=pos,
                             attention_mask=mask, use_cache=True, tome_cache=self, **kwargs)
        finally:
            self._q, self._current = 0, None
        for layer in range(self.n_layers):
            self.positions[layer] = torch.cat([self.positions[layer], pos.expand(self.kv_heads, -1)], 1)
            # The new tokens are held now: the held mask grows by q visible entries (kept when known).
            held = self._held_masks[layer]
            self._held_masks[layer] = (torch.cat([held, held.new_zeros(self.heads, q)], 1)
                                       if per_layer and held is not None else None)
        self.seen += q
        self.next_pos += q
        return out

    def truncate(self, n: int) -> None:
        """Take back the newest ``n`` tokens of the last forward (drafted tokens the model did not pick): the
        cache is then what a forward without them would have left. No eviction may run in between."""
        if n <= 0:
            return
        if not self.policy.drafts:
            raise TypeError(f"the {self.policy.name} policy cannot take tokens back")
        if n > self.seen:
            raise ValueError(f"cannot take back {n} tokens of {self.seen}")
        for layer in range(self.n_layers):
            cl = self.cache.layers[layer]
            cl.keys, cl.values = cl.keys[:, :, :-n], cl.values[:, :, :-n]  # new tokens sit at the end of a layer
            self.positions[layer] = self.positions[layer][:, :-n]
            held = self._held_masks[layer]
            if held is not None:
                self._held_masks[layer] = held[:, :-n]
        self.policy.forget(self, n)
        self.seen -= n
        self.next_pos -= n

    def layer_mask(self, layer: int) -> torch.Tensor | None:
        """The additive (1, heads, q, held + q) mask of ``layer`` in the forward running now, built when the
        layer starts (None: the forward shares one mask). Policies with ``needs_layer_masks`` read it from
        ``after_attention``."""
        if not self._q:
            return None
        if self._current is None or self._current[0] != layer:
            self._current = None  # free the previous layer's mask before building this one
            self._current = (layer, self._mask(layer, self._q))
        return self._current[1]

    def _mask(self, layer: int, q: int) -> torch.Tensor:
        """Additive (1, heads, q, held + q) mask: memories, the valid recent entries of each head, causal new."""
        dtype, device = self._dtype, self._device
        low = torch.finfo(dtype).min
        held = self._held_masks[layer]
        if held is None:
            valid = self.positions[layer] >= 0  # (H, Lr)
            allowed = torch.cat([torch.ones(self.kv_heads, self.prefix_len, dtype=torch.bool, device=device),
                                 valid], 1).repeat_interleave(self.heads // self.kv_heads, 0)
            held = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, low)
            self._held_masks[layer] = held
        if q == 1:  # one new token sees everything held and itself
            return torch.cat([held, held.new_zeros(self.heads, 1)], 1)[None, :, None]
        causal = torch.full((q, q), low, dtype=dtype, device=device).triu_(1)[None].expand(self.heads, -1, -1)
        return torch.cat([held[:, None].expand(-1, q, -1), causal], 2)[None]

    # ---- eviction --------------------------------------------------------------------------------
    @torch.no_grad()
    def evict(self) -> None:
        """Ask the policy what to keep in every layer and really drop the rest."""
        self.policy.prepare(self)
        self._held_masks = [None] * self.n_layers
        for layer in range(self.n_layers):
            positions = self.positions[layer]
            if positions.shape[1] == 0:
                continue
            cl = self.cache.layers[layer]
            p = self.prefix_len
            view = LayerView(keys=cl.keys[0, :, p:], values=cl.values[0, :, p:], positions=positions,
                             seen=self.seen, first_pos=self.prefix_len)
            keep = self.policy.keep(layer, view) & view.valid
            if bool(keep.all()):
                continue
            counts = keep.sum(1)
            width = int(counts.max())
            # Stable order: kept entries first, in position order, then pads.
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
            slot_ok = torch.arange(width, device=keep.device)[None] < counts[:, None]
            idx = order[None, :, :, None]
            k_new = cl.keys[:, :, p:].gather(2, idx.expand(cl.keys.shape[0], -1, -1, cl.keys.shape[-1]))
            v_new = cl.values[:, :, p:].gather(2, idx.expand(cl.values.shape[0], -1, -1, cl.values.shape[-1]))
            cl.keys = torch.cat([cl.keys[:, :, :p], k_new], 2)
            cl.values = torch.cat([cl.values[:, :, :p], v_new], 2)
            self.positions[layer] = positions.gather(1, order).masked_fill(~slot_ok, -1)
            self.policy.reorder(layer, lambda t: t.gather(1, order).masked_fill(~slot_ok, 0.0))
        self._uniform = (len({p.shape[1] for p in self.positions}) == 1
                         and not any(bool((p < 0).any()) for p in self.positions))


# ---- hooks ---------------------------------------------------------------------------------------------
def _layer_pre_hook(module, args, kwargs):
    pc = kwargs.get("tome_cache")
    if isinstance(pc, PolicyCache):
        mask = pc.layer_mask(module.self_attn.layer_idx)
        if mask is not None:
            kwargs["attention_mask"] = mask
            return args, kwargs
    return None


def _attn_pre_hook(module, args, kwargs):
    pc = kwargs.get("tome_cache")
    if isinstance(pc, PolicyCache):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        pc.policy.before_attention(pc, module.layer_idx, hidden, kwargs.get("position_embeddings"))
    return None


def _attn_post_hook(module, args, kwargs, output):
    pc = kwargs.get("tome_cache")
    if isinstance(pc, PolicyCache):
        pc.policy.after_attention(pc, module.layer_idx, module)
    return None


def install_hooks(model) -> None:
    """Hooks that serve PolicyCache forwards (idempotent; inert for forwards without ``tome_cache``)."""
    if getattr(model, "_tome_cache_hooks", False):
        return
    for layer in model.model.layers:
        layer.register_forward_pre_hook(_layer_pre_hook, with_kwargs=True)
        layer.self_attn.register_forward_pre_hook(_attn_pre_hook, with_kwargs=True)
        layer.self_attn.register_forward_hook(_attn_post_hook, with_kwargs=True)
    model._tome_cache_hooks = True
