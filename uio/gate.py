"""Attention-Gate modules: per layer, a keep probability for each new token's K/V in each KV head.

Each layer's gate reads the hidden states entering that layer's attention
(after its input norm). A reduced causal multi-head attention (few heads,
small head dim, over a sliding window of recent tokens so its own cost stays
bounded) mixes context in; a linear map gives one logit per KV head; a sigmoid
gives the keep probability. Tokens are judged independently (no competition
between them). Inference keeps a token where the probability reaches the
threshold; training uses the same hard decision with a straight-through
gradient. Sinks and the most recent tokens are always kept by the policy.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GateConfig:
    hidden_size: int
    kv_heads: int
    num_layers: int
    heads: int = 2
    head_dim: int = 8
    window: int = 64  # tokens the gate's own attention looks back over
    sink: int = 4  # first recent tokens always kept
    recent: int = 16  # most recent tokens always kept
    init_bias: float = 3.0  # start by keeping nearly everything (sigmoid(3) = 0.95)
    base_model: str = ""

    @classmethod
    def for_model(cls, model, base_model: str = "", **kw) -> "GateConfig":
        c = model.config
        return cls(hidden_size=c.hidden_size, kv_heads=c.num_key_value_heads, num_layers=c.num_hidden_layers,
                   base_model=base_model, **kw)


BAND_DENSE = 512  # up to this many new tokens the gate's banded attention runs as one masked SDPA (faster there)


class LayerGate(nn.Module):
    def __init__(self, cfg: GateConfig):
        super().__init__()
        self.heads, self.head_dim, self.window = cfg.heads, cfg.head_dim, cfg.window
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.heads * cfg.head_dim)
        self.out = nn.Linear(cfg.heads * cfg.head_dim, cfg.kv_heads)
        self.direct = nn.Linear(cfg.hidden_size, cfg.kv_heads, bias=False)  # the token's own say
        nn.init.normal_(self.qkv.weight, std=cfg.hidden_size ** -0.5)
        nn.init.zeros_(self.qkv.bias)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.constant_(self.out.bias, cfg.init_bias)
        nn.init.normal_(self.direct.weight, std=0.01 * cfg.hidden_size ** -0.5)

    def logits(self, hidden: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits (B, q, kv_heads) for hidden (B, q, D) following ``state`` (the gate's K/V of earlier tokens)."""
        B, q, _ = hidden.shape
        x = hidden.to(self.qkv.weight.dtype)
        qs, ks, vs = self.qkv(x).view(B, q, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if state is not None:
            ks, vs = torch.cat([state[0], ks], 2), torch.cat([state[1], vs], 2)
        if q > BAND_DENSE:
            mixed = self._windowed(qs, ks, vs)
        else:
            band = None  # one new token after a state of < window tokens: it sees them all (decoding)
            if q > 1 or ks.shape[2] > self.window:
                past = ks.shape[2] - q
                qi = torch.arange(q, device=x.device)[:, None] + past
                kj = torch.arange(ks.shape[2], device=x.device)[None]
                band = (kj <= qi) & (kj > qi - self.window)  # causal, last `window` tokens
            mixed = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=band)
        mixed = mixed.transpose(1, 2).reshape(B, q, -1)
        keep_from = max(0, ks.shape[2] - (self.window - 1))
        return self.out(mixed) + self.direct(x), (ks[:, :, keep_from:], vs[:, :, keep_from:])

    def _windowed(self, qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor) -> torch.Tensor:
        """The banded attention, each query over its own ``window`` keys: (q, window) scores where the dense path
        makes a (q, past + q) mask and score matrix, quadratic (a 3,200-token prompt's gates cost 0.54 s of its
        prefill on 2 cores; this way 0.07 s)."""
        q, w = qs.shape[2], self.window
        past = ks.shape[2] - q
        pad = max(0, w - 1 - past)  # keys before the first: masked, so every query has a whole window
        if pad:
            ks, vs = F.pad(ks, (0, 0, pad, 0)), F.pad(vs, (0, 0, pad, 0))
        first = past + pad - w + 1  # the window of the first query
        kw = ks.unfold(2, w, 1)[:, :, first:first + q]  # (B, heads, q, head_dim, w): views, no copy
        vw = vs.unfold(2, w, 1)[:, :, first:first + q]
        scores = (qs.unsqueeze(-2) @ kw).squeeze(-2) / math.sqrt(qs.shape[-1])  # (B, heads, q, w)
        if pad:
            key = torch.arange(q, device=qs.device)[:, None] + (past - w + 1) + torch.arange(w, device=qs.device)
            scores = scores.masked_fill(key < 0, float("-inf"))
        return (scores.softmax(-1).unsqueeze(-2) @ vw.transpose(-1, -2)).squeeze(-2)

    def step(self, hidden: torch.Tensor, state=None) -> tuple[torch.Tensor, tuple]:
        """Keep probabilities (B, q, kv_heads) and the new state."""
        logits, state = self.logits(hidden, state)
        return torch.sigmoid(logits), state


class AttentionGates(nn.Module):
    """One LayerGate per attention layer, saved as safetensors with the base model's name."""

    def __init__(self, cfg: GateConfig):
        super().__init__()
        self.config = cfg
        self.layers = nn.ModuleList(LayerGate(cfg) for _ in range(cfg.num_layers))
        self.quantiles: list[float] = []  # keep-probability quantiles 0, 1, .., 100 % (``calibrate``)

    def threshold_for(self, eviction: float) -> float | None:
        """The threshold that evicts about ``eviction`` of the tokens the gate decides on; None if uncalibrated."""
        if not self.quantiles:
            return None
        i = min(max(eviction, 0.0), 1.0) * (len(self.quantiles) - 1)
        lo = int(i)
        hi = min(lo + 1, len(self.quantiles) - 1)
        return self.quantiles[lo] + (i - lo) * (self.quantiles[hi] - self.quantiles[lo])

    def save(self, path: Path, dtype: torch.dtype = torch.float16) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={"format": "tome-attention-gate",
                                               "base_model": self.config.base_model,
                                               "config": json.dumps(asdict(self.config)),
                                               "quantiles": json.dumps(self.quantiles)})

    @classmethod
    def load(cls, path: Path, base_model: str | None = None, device: str | torch.device = "cpu"
             ) -> "AttentionGates":
        """Gates from ``path``; refuses gates trained for another base model when ``base_model`` is given."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no Attention-Gate weights at {path}; train them with "
                                    "`python -m uio.train.gate --model <name>` (see docs/GATE.md)")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        cfg = GateConfig(**json.loads(meta["config"]))
        if base_model is not None and cfg.base_model and cfg.base_model != base_model:
            raise ValueError(f"the gate at {path} was trained for {cfg.base_model!r}, not {base_model!r}")
        gates = cls(cfg)
        gates.load_state_dict({k: v.float() for k, v in tensors.items()})
        gates.quantiles = json.loads(meta.get("quantiles", "[]"))
        return gates.to(device).eval().requires_grad_(False)


def straight_through(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hard 0/1 keep decisions forward; the gradient of the probabilities backward."""
    hard = (probs >= threshold).to(probs.dtype)
    return hard + probs - probs.detach()


@contextlib.contextmanager
def attention_inputs(model, take=lambda module, hidden, kwargs: hidden) -> Iterator[dict[int, object]]:
    """layer -> ``take(attention module, its input hidden states, the call's kwargs)`` during forwards."""
    seen: dict[int, object] = {}

    def hook(module, args, kwargs):
        seen[module.layer_idx] = take(module, kwargs.get("hidden_states", args[0] if args else None), kwargs)

    handles = [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in model.model.layers]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def collect_hidden(model):
    """Record the hidden states entering each layer's attention (after its input norm) during forwards."""
    return attention_inputs(model)
