"""The recent-cache policy interface, and the cache that really removes what a policy evicts.

A policy looks at one layer's recent entries (everything after the
``prefix_len`` memory slots, which are never touched) and says which to keep,
per KV head. ``PolicyCache`` wraps a transformers ``DynamicCache``: after each
prefill chunk or decode step it gathers the kept entries into smaller
tensors. Heads may keep different tokens, so each layer is padded to its
longest head and the pads are masked out of attention.

The per-layer masks, the hidden states a gate reads and the queries H2O
scores with all travel through forward hooks that act only when the forward
call carries ``tome_cache=<PolicyCache>``; other callers of the same model are
unaffected.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache



@dataclass
class LayerView:
    """One layer's recent cache as a policy sees it (batch 1); L = padded length, H = KV heads."""

    keys: torch.Tensor  # (H, L, hd), rotated
    values: torch.Tensor  # (H, L, hd)
    positions: torch.Tensor  # (H, L) absolute positions, -1 for pads
    scores: torch.Tensor | None  # (H, L) accumulated attention received (policies that ask for it)
    keep_prob: torch.Tensor | None  # (H, L) gate keep probability (gates)
    seen: int  # recent tokens seen so far
    first_pos: int  # position of the first recent token (= prefix_len)

    @property
    def valid(self) -> torch.Tensor:
        return self.positions >= 0


@dataclass
class CachePolicy:
    """Keep everything. Subclasses override ``keep``; ``target_eviction`` sets the budget."""

    target_eviction: float | None = None
    needs_scores: bool = field(default=False, init=False)  # accumulate attention received (H2O)
    name: str = field(default="full", init=False)

    def budget(self, seen: int) -> int | None:
        """Entries one head may hold after ``seen`` recent tokens; None: no fixed budget."""
        if self.target_eviction is None:
            return None
        return max(1, math.ceil(round((1.0 - self.target_eviction) * seen, 6)))  # round: 0.3 * 100 is 30

    def keep(self, layer: int, view: LayerView) -> torch.Tensor:
        """(H, L) bool: which entries stay. Pads are dropped whatever this says."""
        return view.valid

    def gate_for(self, layer: int):
        """The gate module of this layer, for policies that compute keep probabilities."""
        return None

    def prepare(self, cache: "PolicyCache") -> None:
        """Called once before each eviction pass over the layers (e.g. to set a cache-wide threshold)."""


def top_per_head(priority: torch.Tensor, k: int) -> torch.Tensor:
    """(H, L) bool marking each head's k largest entries (priority -inf never wins over a real one)."""
    k = min(k, priority.shape[1])
    idx = priority.topk(k, dim=1).indices
    return torch.zeros_like(priority, dtype=torch.bool).scatter_(1, idx, True)


class PolicyCache:
    """A DynamicCache plus, per layer, the positions (and scores) of its recent entries."""

    def __init__(self, model, policy: CachePolicy, cache: DynamicCache | None = None, prefix_len: int = 0):
        self.model, self.policy, self.prefix_len = model, policy, prefix_len
        cfg = model.config
        self.n_layers = cfg.num_hidden_layers
        self.kv_heads = cfg.num_key_value_heads
        self.heads = cfg.num_attention_heads
        self.cache = cache if cache is not None else DynamicCache(config=cfg)
        empty = torch.empty(self.kv_heads, 0, dtype=torch.long, device=model.device)
        self.positions = [empty.clone() for _ in range(self.n_layers)]
        self.scores: list[torch.Tensor | None] = [None] * self.n_layers
        self.keep_prob: list[torch.Tensor | None] = [None] * self.n_layers
        self.gate_state: list[object] = [None] * self.n_layers  # a gate's own rolling K/V
        self.prob_history: list[list[torch.Tensor]] = [[] for _ in range(self.n_layers)]  # every (H, q) given
        # Layer inputs of tokens the gate has not judged yet. Its decisions matter only when eviction runs, so
        # decoded tokens are judged together then, in one call per layer: on CPU a call per token per layer
        # cost more than eviction saved (qwen at 768 tokens decoded at 0.89x the full cache's speed).
        self._gate_pending: list[list[torch.Tensor]] = [[] for _ in range(self.n_layers)]
        self.seen = 0
        self.next_pos = prefix_len
        self._dtype, self._device = model.dtype, model.device  # model.device walks the parameters: once
        self._uniform = True  # every layer holds the same number of entries and no pads: one causal mask
        self._masks: list[torch.Tensor] = []
        # Per layer, the additive mask (heads, held) over everything held, while it is known: the last row
        # of the previous forward's mask. Decoding then builds its mask with one cat instead of rebuilding it.
        self._held_masks: list[torch.Tensor | None] = [None] * self.n_layers
        self._pending: dict[int, tuple] = {}
        install_hooks(model)

    # ---- sizes -----------------------------------------------------------------------------------
    def layer_len(self, layer: int) -> int:
        return self.prefix_len + self.positions[layer].shape[1]

    def kv_bytes_held(self) -> list[int]:
        """Bytes of keys + values each layer holds now (memories included, pads included: real memory)."""
        out = []
        for layer in range(self.n_layers):
            cl = self.cache.layers[layer] if layer < len(self.cache.layers) else None
            if cl is None or not cl.is_initialized or cl.keys is None:
                out.append(0)
            else:
                out.append(cl.keys.numel() * cl.keys.element_size() + cl.values.numel() * cl.values.element_size())
        return out

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
        if self._uniform and not self.policy.needs_scores:
            # No pads and equal lengths: one plain causal mask serves all layers. None at all for one token,
            # or when nothing is held yet: the model's own causal path (SDPA is_causal) is faster on CPU.
            empty = self.prefix_len == 0 and self.positions[0].shape[1] == 0
            mask = None if q == 1 or empty else self._mask(0, q)[:, :1]
            self._masks = []
        else:
            self._masks = [self._mask(layer, q) for layer in range(self.n_layers)]
            mask = self._masks[0]
        out = self.model(input_ids=input_ids, past_key_values=self.cache, position_ids=pos,
                         attention_mask=mask, use_cache=True, tome_cache=self, **kwargs)
        for layer in range(self.n_layers):
            self.positions[layer] = torch.cat([self.positions[layer], pos.expand(self.kv_heads, -1)], 1)
        # The new tokens are held now: a mask's last query row (it sees every new token) is the held mask.
        self._held_masks = ([m[0, :, -1].contiguous() for m in self._masks] if self._masks
                            else [None] * self.n_layers)
        self.seen += q
        self.next_pos += q
        self._masks, self._pending = [], {}
        return out

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
        if q == 1:  # one new token sees everything held and itself
            return torch.cat([held, held.new_zeros(self.heads, 1)], 1)[None, :, None]
        causal = torch.full((q, q), low, dtype=dtype, device=device).triu_(1)[None].expand(self.heads, -1, -1)
        return torch.cat([held[:, None].expand(-1, q, -1), causal], 2)[None]

    # ---- hooks (called from the model's forward) -------------------------------------------------
    def _before_attention(self, layer: int, hidden: torch.Tensor, position_embeddings) -> None:
        if self.policy.gate_for(layer) is not None:
            self._gate_pending[layer].append(hidden)
            if hidden.shape[1] > 1:  # a prompt chunk: judge it now rather than hold its hidden states
                self._judge(layer)
        if self.policy.needs_scores:
            self._pending[layer] = (hidden, position_embeddings)

    def _after_attention(self, layer: int, attn_module) -> None:
        if layer not in self._pending:
            return
        hidden, (cos, sin) = self._pending.pop(layer)
        cl = self.cache.layers[layer]
        hd = cl.keys.shape[-1]
        qs = attn_module.q_proj(hidden).view(*hidden.shape[:-1], -1, hd).transpose(1, 2)
        apply = importlib.import_module(type(attn_module).__module__).apply_rotary_pos_emb
        qs, _ = apply(qs, qs, cos, sin)
        groups = self.heads // self.kv_heads
        keys = cl.keys.repeat_interleave(groups, 1)
        logits = (qs @ keys.transpose(-1, -2)) * attn_module.scaling + self._masks[layer]
        probs = logits.float().softmax(-1)[0]  # (heads, q, L)
        got = probs.sum(1).view(self.kv_heads, groups, -1).sum(1)[:, self.prefix_len:]  # (H, Lr + q)
        old = self.scores[layer]
        if old is not None:
            got[:, :old.shape[1]] += old
        self.scores[layer] = got

    def _judge(self, layer: int) -> None:
        """Run the layer's gate over the tokens it has not judged yet (in order, continuing its own state)."""
        pending = self._gate_pending[layer]
        if not pending:
            return
        hidden = pending[0] if len(pending) == 1 else torch.cat(pending, 1)
        probs, self.gate_state[layer] = self.policy.gate_for(layer).step(hidden, self.gate_state[layer])
        new = probs[0].transpose(0, 1).to(torch.float32)  # (H, q)
        self.prob_history[layer].append(new)
        old = self.keep_prob[layer]
        self.keep_prob[layer] = new if old is None else torch.cat([old, new], 1)
        self._gate_pending[layer] = []

    # ---- eviction --------------------------------------------------------------------------------
    @torch.no_grad()
    def evict(self) -> None:
        """Ask the policy what to keep in every layer and really drop the rest."""
        for layer in range(self.n_layers):
            self._judge(layer)
        self.policy.prepare(self)
        self._held_masks = [None] * self.n_layers
        for layer in range(self.n_layers):
            positions = self.positions[layer]
            if positions.shape[1] == 0:
                continue
            cl = self.cache.layers[layer]
            p = self.prefix_len
            view = LayerView(keys=cl.keys[0, :, p:], values=cl.values[0, :, p:], positions=positions,
                             scores=self.scores[layer], keep_prob=self.keep_prob[layer], seen=self.seen,
                             first_pos=self.prefix_len)
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
            for name in ("scores", "keep_prob"):
                held = getattr(self, name)[layer]
                if held is not None:
                    getattr(self, name)[layer] = held.gather(1, order).masked_fill(~slot_ok, 0.0)
        self._uniform = (len({p.shape[1] for p in self.positions}) == 1
                         and not any(bool((p < 0).any()) for p in self.positions))


# ---- hooks ---------------------------------------------------------------------------------------------
def _layer_pre_hook(module, args, kwargs):
    pc = kwargs.get("tome_cache")
    if isinstance(pc, PolicyCache) and pc._masks:
        kwargs["attention_mask"] = pc._masks[module.self_attn.layer_idx]
        return args, kwargs
    return None


def _attn_pre_hook(module, args, kwargs):
    pc = kwargs.get("tome_cache")
    if isinstance(pc, PolicyCache):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        pc._before_attention(module.layer_idx, hidden, kwargs.get("position_embeddings"))
    return None


def _attn_post_hook(module, args, kwargs, output):
    pc = kwargs.get("tome_cache")
    if isinstance(pc, PolicyCache):
        pc._after_attention(module.layer_idx, module)
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
