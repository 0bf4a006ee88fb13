"""The learned KV scorer behind ``kvzip-fast`` (the idea of Fast KVzip, arXiv 2601.17668).

Per layer, a tiny MLP reads what the segment's one prefill already has, the
hidden state entering that layer's attention (after its input norm, the
``uio.gate`` input), and gives one score per KV head per token: a prediction
of the rank KVzip's reconstruction scoring (``uio.compress.kvzip``) would give
that KV pair. The pre-RoPE keys and values are linear maps of that same
hidden state (Llama, Qwen2), so reading them too would add nothing a linear
first layer cannot learn.

    score[l, h, t] = w2[l, h] · gelu(W1[l] · norm_l(x[l, t]) + P[l] · tok(t) + b1[l])[h] + b2[l, h]

``norm_l`` standardises each feature with the training data's mean and std (a
few dimensions of a residual stream are orders of magnitude larger than the
rest). ``tok(t)``: where the token sits (t / 1024, log(1 + t) / 7), and, with
``repeats``, how often its token id and its bigram (previous id, id) occur in
the whole segment (log counts): the reconstruction queries spread their
attention over the copies of repeated text and concentrate it on what occurs
once (a pass key in filler), which a token's own hidden state cannot see.

With ``cross`` (version 2 scorers), each KV head also gets features read from the layer's rotated queries and
keys in the same prefill (``cross_features``: O(n·d) per head, plus with ``cross_stride`` one O(n²·d/stride)
term). KVzip scores key t by the attention it gets when the model re-reads the segment, where the copy of
token t-1 queries it from ~n + 16 positions later (induction), which a per-token MLP cannot see:

    score[l, h, t] = w2 · gelu(... + Σ_f C[l, h, f] · norm(cross(l, h, t))_f)[h] + b2   (per KV head)

The weights file (safetensors) names the base model (its key and
``uio.adapter.base_fingerprint``); ``KVScorer.load(path, lm)`` refuses weights
made for another model. Trained by ``python -m uio.train.scorer``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "tome-kv-scorer"


@dataclass
class ScorerConfig:
    hidden_size: int
    kv_heads: int
    num_layers: int
    rank: int = 32  # hidden units per KV head
    base_model: str = ""  # the embedded key ("smollm2", "qwen") or the model's name
    fingerprint: str = ""  # uio.adapter.base_fingerprint of the base model
    repeats: bool = False  # token features include the segment's token and bigram counts
    cross: bool = False  # per-KV-head features from the prefill's queries and keys (cross_features)
    cross_stride: int = 0  # with cross: > 0 adds the normalised induction pair, keys strided by this

    @property
    def cross_dim(self) -> int:
        return cross_dim(self.cross_stride) if self.cross else 0

    @property
    def token_features(self) -> int:
        return 4 if self.repeats else 2

    @classmethod
    def for_model(cls, lm, **kw) -> "ScorerConfig":
        from uio.compress.base import model_fingerprint
        from uio.model import embedded_key

        c = lm.model.config
        kw.setdefault("base_model", embedded_key(lm.name) or lm.name)
        kw.setdefault("fingerprint", model_fingerprint(lm))
        return cls(hidden_size=c.hidden_size, kv_heads=c.num_key_value_heads, num_layers=c.num_hidden_layers, **kw)


CROSS_FEATURES = 4  # without the normalised induction pair (cross_stride = 0)
REQUEST_OFFSET = 16  # ~ tokens of KVzip's repeat request (prompt + chat suffix) before the copy starts
WINDOW = 32  # the segment's last queries whose attention is a feature (SnapKV's observation window)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE rotation (rotate_half convention, Llama/Qwen2) of x (.., d) by the angle of cos/sin (d,)."""
    a, b = x.chunk(2, -1)
    return x * cos + torch.cat([-b, a], -1) * sin


def cross_dim(stride: int) -> int:
    """Features per KV head and token of ``cross_features(..., stride)``."""
    return CROSS_FEATURES + (2 if stride else 0)


@torch.no_grad()
def cross_features(module: nn.Module, query: torch.Tensor, keys: torch.Tensor, rotary: nn.Module,
                   stride: int = 0) -> torch.Tensor:
    """(kv, n, cross_dim(stride)) float32 features of each KV head's keys from one layer's prefill.

    query (1, H, n, d) and keys (1, Hkv, n, d), rotated as the attention sees them (``tome_observe``);
    ``rotary``: the model's rotary embedding (``body(lm).rotary_emb``). KVzip's re-reading copy of token
    t-1 queries key t from ~n + REQUEST_OFFSET positions later; RoPE rotations compose, so the prefill's
    query at t-1 against keys turned back by that offset is the cheap proxy (its content differs):

        far_g(t) = q_g(t-1) · R(-(n + 16)) k(t) · scale      (g: the KV head's query heads)
        [max_g far, mean_g far, |k(t)|, log max attention on t from the segment's last WINDOW queries]
        + with ``stride``: [max_g, mean_g of far_g(t) - logsumexp_j far-logit of q_g(t-1) to key j], the
          log share of that proxy query's attention key t would get, the sum over every ``stride``-th key
          (x stride): O(n² d / stride) per head, the one costly feature.
    """
    _, h, n, d = query.shape
    kv = keys.shape[1]
    g = h // kv
    scale = float(getattr(module, "scaling", d ** -0.5))
    q = query[0].reshape(kv, g * n, d)  # GQA: query head h reads KV head h // g
    k = keys[0]
    cos, sin = rotary(k, position_ids=torch.tensor([[n + REQUEST_OFFSET]], device=k.device))  # (1, 1, d)
    # the scale and the offset rotation go on the keys (g times fewer than the queries)
    k_back = _rotate(k.float(), cos[0, 0].float(), -sin[0, 0].float()) * scale  # (kv, n, d)
    q4 = q.view(kv, g, n, d)
    far = (q4[:, :, :-1].float() * k_back[:, None, 1:]).sum(-1)  # (kv, g, n-1): query t-1, key t
    pad = lambda x: F.pad(x, (1, 0))  # noqa: E731  (token 0 has no predecessor)
    w = min(WINDOW, n)
    logits = torch.matmul(q4[:, :, n - w:].float(), (k.float() * scale).transpose(-1, -2)[:, None])  # (kv, g, w, n)
    i = torch.arange(w, device=q.device)[:, None] + (n - w)
    logits.masked_fill_(torch.arange(n, device=q.device)[None] > i, float("-inf"))
    window = logits.softmax(-1).amax(dim=(1, 2)).clamp_min(1e-6).log()  # (kv, n)
    feats = [pad(far.amax(1)), pad(far.mean(1)), k.float().norm(dim=-1), window]
    if stride:
        # the normaliser from every stride-th key, the matmul in the model's dtype (bf16 is fast on CPUs)
        sub = k_back[:, ::stride].to(q.dtype).transpose(-1, -2)  # (kv, d, n / stride)
        lse = torch.bmm(q, sub).view(kv, g, n, -1)[:, :, :-1].float().logsumexp(-1) + math.log(stride)
        share = far - lse
        feats += [pad(share.amax(1)), pad(share.mean(1))]
    return torch.stack(feats, -1)


def positions(t: torch.Tensor) -> torch.Tensor:
    """(m, 2) position features of the tokens at indices ``t`` (m,) of a segment."""
    t = t.float()
    return torch.stack([t / 1024.0, torch.log1p(t) / 7.0], -1)


def repeat_counts(ids: torch.Tensor) -> torch.Tensor:
    """(n, 2): log counts, in the whole segment ``ids`` (n,), of each token's id and of its bigram."""
    ids = ids.long()
    prev = torch.cat([ids.new_full((1,), -1), ids[:-1]])
    bigram = (prev + 1) * (int(ids.max()) + 2) + ids
    feats = []
    for key in (ids, bigram):
        _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
        feats.append(torch.log(counts[inverse].float()) / math.log(1024))
    return torch.stack(feats, -1)


def token_features(cfg: ScorerConfig, n: int, ids: torch.Tensor | None = None,
                   index: torch.Tensor | None = None) -> torch.Tensor:
    """(m, F) features of the tokens at ``index`` (default all n) of a segment whose ids are ``ids``."""
    if index is None:
        index = torch.arange(n)
    feats = positions(index)
    if cfg.repeats:
        if ids is None:
            raise ValueError("this scorer reads the segment's token ids (repeats=True): pass ids")
        feats = torch.cat([feats, repeat_counts(ids.cpu())[index.cpu()]], -1)
    return feats


class LayerScorer(nn.Module):
    """One layer's MLP: hidden (.., n, D) -> scores (.., kv_heads, n)."""

    def __init__(self, cfg: ScorerConfig):
        super().__init__()
        self.kv, self.rank = cfg.kv_heads, cfg.rank
        self.register_buffer("mean", torch.zeros(cfg.hidden_size))
        self.register_buffer("inv_std", torch.ones(cfg.hidden_size))
        self.inp = nn.Linear(cfg.hidden_size, cfg.kv_heads * cfg.rank)
        self.pos = nn.Linear(cfg.token_features, cfg.kv_heads * cfg.rank, bias=False)
        self.out = nn.Parameter(torch.randn(cfg.kv_heads, cfg.rank) * cfg.rank ** -0.5)
        self.out_bias = nn.Parameter(torch.zeros(cfg.kv_heads))
        self.cross = cfg.cross
        if cfg.cross:  # per-KV-head weights: head h's features feed only head h's hidden units
            self.register_buffer("cross_mean", torch.zeros(cfg.kv_heads, cfg.cross_dim))
            self.register_buffer("cross_inv_std", torch.ones(cfg.kv_heads, cfg.cross_dim))
            self.cross_w = nn.Parameter(torch.randn(cfg.kv_heads, cfg.cross_dim, cfg.rank) * 0.1)

    def forward(self, hidden: torch.Tensor, feats: torch.Tensor, cross: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``feats`` (n, F): ``token_features`` of the same tokens; ``cross`` (kv, n, cross_dim):
        ``cross_features`` of them (required when the config has ``cross``)."""
        x = (hidden.float() - self.mean) * self.inv_std
        pre = self.inp(x) + self.pos(feats.to(x.device))  # (.., n, kv * rank)
        pre = pre.unflatten(-1, (self.kv, self.rank))
        if self.cross:
            if cross is None:
                raise ValueError("this scorer reads the prefill's queries and keys (cross=True): pass cross")
            c = (cross.float().to(x.device) - self.cross_mean[:, None]) * self.cross_inv_std[:, None]
            pre = pre + torch.einsum("knf,kfr->nkr", c, self.cross_w)
        h = F.gelu(pre)
        return ((h * self.out).sum(-1) + self.out_bias).transpose(-1, -2)  # (.., kv, n)


class KVScorer(nn.Module):
    """One ``LayerScorer`` per layer, saved as safetensors naming its base model."""

    def __init__(self, cfg: ScorerConfig):
        super().__init__()
        self.config = cfg
        self.layers = nn.ModuleList(LayerScorer(cfg) for _ in range(cfg.num_layers))

    def features(self, n: int, ids: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        """``token_features`` for this scorer: compute once per segment, pass to every layer."""
        return token_features(self.config, n, ids, index)

    def forward(self, layer: int, hidden: torch.Tensor, ids: torch.Tensor | None = None,
                feats: torch.Tensor | None = None, cross: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (kv_heads, n) of layer ``layer`` for its attention input ``hidden`` (1, n, D) or (n, D) of the
        segment ``ids`` (n,) (or its ``features``, given once for all layers), and with a ``cross`` config
        that layer's ``cross_features`` (kv, n, cross_dim)."""
        if feats is None:
            feats = self.features(hidden.shape[-2], ids)
        s = self.layers[layer](hidden, feats, cross)
        return s[0] if s.dim() == 3 else s

    def digest(self) -> str:
        """sha256 over the config and the weights (as saved): memories of other weights are other memories."""
        cfg = asdict(self.config)
        if not cfg["cross"]:  # absent from version-1 configs: their digests stay what they were
            cfg.pop("cross")
            cfg.pop("cross_stride")
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().to("cpu", torch.float16).numpy().tobytes())
        return h.hexdigest()

    def save(self, path: Path, extra: dict | None = None) -> Path:
        """Write fp16 weights (the mean and inverse std in float32) with the config in the metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: (v if k.endswith(("mean", "inv_std")) else v.to(torch.float16)).detach().contiguous()
                   for k, v in self.state_dict().items()}
        meta = {"format": FORMAT, "base_model": self.config.base_model, "config": json.dumps(asdict(self.config))}
        meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.chmod(0o644)  # shipped with the package: readable by the service's user
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path, lm=None, device: str | torch.device = "cpu") -> "KVScorer":
        """The scorer at ``path``; with ``lm`` (a LoadedModel) given, refuses weights of another base model."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no kvzip-fast scorer weights at {path}; train them with "
                                    "`python -m uio.train.scorer --model <name>` (docs/COMPRESSION.md)")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a kvzip-fast scorer (format {meta.get('format')!r})")
        cfg = ScorerConfig(**json.loads(meta["config"]))
        if lm is not None:
            check_fits(cfg, lm, path)
        scorer = cls(cfg)
        scorer.load_state_dict({k: v.float() for k, v in tensors.items()})
        return scorer.to(device).eval().requires_grad_(False)


def check_fits(cfg: ScorerConfig, lm, where: object = "the scorer") -> None:
    """Raise ValueError unless ``cfg`` was made for ``lm``'s base model (fingerprint, then shape)."""
    from uio.compress.base import model_fingerprint

    c = lm.model.config
    if cfg.fingerprint and cfg.fingerprint != model_fingerprint(lm):
        raise ValueError(f"the kvzip-fast scorer at {where} was trained for base model {cfg.base_model!r}, "
                         f"not {lm.name!r} (base fingerprints differ); train one for this model with "
                         "`python -m uio.train.scorer`")
    if (cfg.hidden_size, cfg.kv_heads, cfg.num_layers) != (c.hidden_size, c.num_key_value_heads,
                                                           c.num_hidden_layers):
        raise ValueError(f"the kvzip-fast scorer at {where} has the shape of another model "
                         f"({cfg.base_model!r}), not {lm.name!r}")


def scorer_path(key: str) -> Path:
    """The scorer shipped for base model ``key`` (``uio/weights/scorer-<key>.safetensors``; may not exist).

    Beside the gates, read from ``uio.shipped.WEIGHTS_DIR`` at call time so a test may point it elsewhere.
    """
    from uio import shipped

    return shipped.WEIGHTS_DIR / f"scorer-{key}.safetensors"


def topk_agreement(pred: torch.Tensor, target: torch.Tensor, ratio: int, n_sink: int = 4) -> float:
    """Share of KVzip's kept set the prediction keeps too, at ``ratio``, averaged over layers and heads.

    pred, target (layers, kv, n): both select ceil(n / ratio) per head with the first ``n_sink`` forced in,
    as ``ScoringCompressor.select`` does; the sinks are left out of the count (they agree by construction).
    """
    n = pred.shape[-1]
    k = max(1, min(n, math.ceil(n / ratio)))
    sink = min(n_sink, k)
    if k == sink:
        return 1.0
    def kept(s: torch.Tensor) -> torch.Tensor:
        s = s.float().clone()
        s[..., :sink] = float("inf")
        m = torch.zeros_like(s, dtype=torch.bool)
        return m.scatter_(-1, s.topk(k, -1).indices, True)[..., sink:]
    both = (kept(pred) & kept(target)).sum(-1).float()
    return float((both / (k - sink)).mean())
