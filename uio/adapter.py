"""The trainable part of the memory model: encoder LoRA, transfer head LoRA and the <mem> embedding.

Both LoRAs are PEFT layers injected into the base model in place. They are
*disabled* by default, so every ordinary use of the model (plain answers,
the decoder over memories) runs the frozen base model; only
``adapter.encoding()`` switches the encoder LoRA on. The transfer head is
never active inside a forward: ``transfer()`` applies it explicitly to the
memory tokens' hidden states.

Two encoder modes (``mode``, saved in the file's metadata and part of the fingerprint):
``"full"`` (the UIO paper's: the encoder LoRA acts on every token of the segment) and
``"memory"`` (Activation Beacon's ``only_train_beacon``: ordinary tokens go through the frozen
model, the encoder LoRA acts on the ``<mem>`` tokens alone; ``uio.encoder`` runs the two
passes). The trainable parameters are the same in both.

A memory-mode adapter can start from a training-free compressor (``base``, also in the file and the
fingerprint): slot i of a segment is then the ``base`` method's kept key/value (``"kvzip"``: KVzip's
selection per layer and KV head; ``"strided"``: the token just before the slot's position c_i) plus the
transfer head's LoRA alone applied to the <mem> token's hidden state. PEFT starts LoRA B at zero, so an
untrained adapter makes exactly the base method's memories, and training learns a correction.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file

from uio.memory import MemoryConfig, MemoryMismatch
from uio.model import LoadedModel

# Tensor names in adapter files; inside a model each adapter's PEFT layers carry its own name, so
# several adapters (8x and 32x, say) can live in one base model and be switched per use.
ENCODER, TRANSFER = "uio_encoder", "uio_transfer"
MODES = ("full", "memory")  # the encoder LoRA on every token / on the <mem> tokens only
BASES = ("none", "kvzip", "strided")  # what memory slots start from (memory mode only)
# Config fields that decide whether weights fit a model; the rest (paths, versions, dtype) do not.
_STRUCTURAL = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rope_parameters",
               "max_position_embeddings", "tie_word_embeddings")


def body(lm: LoadedModel):
    """The decoder stack (LlamaModel, Qwen2Model, ...) inside the causal LM: no lm_head."""
    return lm.model.model


def base_fingerprint(lm: LoadedModel) -> str:
    """sha256 of the model's structure and a weight sample; the same in any dtype the model is loaded in."""
    cfg = lm.model.config.to_dict()
    h = hashlib.sha256(json.dumps({k: cfg.get(k) for k in _STRUCTURAL}, sort_keys=True, default=str).encode())
    b = body(lm)
    samples = [b.embed_tokens.weight[:16, :64], b.layers[-1].self_attn.o_proj.weight[:16, :64]]
    for t in samples:
        # Rounded through bf16: a bf16 load and a float32 load of the same weights agree.
        h.update(t.detach().to("cpu", torch.bfloat16).float().numpy().tobytes())
    return h.hexdigest()


class UIOAdapter:
    """Encoder LoRA (q_proj, v_proj) + transfer head LoRA (k_proj, v_proj) + <mem> embedding."""

    def __init__(self, lm: LoadedModel, config: MemoryConfig | None = None, name: str | None = None,
                 mode: str = "full", base: str = "none"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if base not in BASES or (base != "none" and mode != "memory"):
            raise ValueError(f"base must be one of {BASES} (other than 'none' only in memory mode), not {base!r}")
        self.lm, self.config, self.mode, self.base = lm, config or MemoryConfig(), mode, base
        c = self.config
        taken = {n for m in lm.model.modules() if isinstance(m, LoraLayer) for n in m.lora_A}
        name = name or f"{c.ratio}x"
        base, k = name, 1
        while f"{ENCODER}_{name}" in taken:
            k += 1
            name = f"{base}_{k}"
        self.name = name
        self.enc_name, self.head_name = f"{ENCODER}_{name}", f"{TRANSFER}_{name}"
        with warnings.catch_warnings():  # PEFT warns that several adapters are unusual; it is our design
            warnings.simplefilter("ignore", UserWarning)
            inject_adapter_in_model(LoraConfig(r=c.enc_rank, lora_alpha=c.enc_alpha, lora_dropout=c.dropout,
                                               target_modules=["q_proj", "v_proj"]), lm.model,
                                    adapter_name=self.enc_name)
            inject_adapter_in_model(LoraConfig(r=c.head_rank, lora_alpha=c.head_alpha, lora_dropout=c.dropout,
                                               target_modules=["k_proj", "v_proj"]), lm.model,
                                    adapter_name=self.head_name)
        self._lora = [m for m in lm.model.modules() if isinstance(m, LoraLayer)]
        with self._keeping_grad_flags():
            for m in self._lora:
                m.enable_adapters(False)  # the frozen base model is the default state
        for p in self.lora_parameters():
            p.requires_grad_(False)
            p.data = p.data.to(lm.dtype)
        emb = body(lm).embed_tokens.weight
        init = emb[lm.tokenizer.eos_token_id].detach()
        if not init.any():  # EOS doubling as the padding row (zeroed at init): a dead start for every slot
            init = emb.detach().float().mean(0).to(emb.dtype)
        self.mem_embedding = torch.nn.Parameter(init.clone(), requires_grad=False)
        self.base_fingerprint = base_fingerprint(lm)
        self._fingerprint: str | None = None

    def _own(self, param_name: str) -> bool:
        return f".{self.enc_name}." in param_name or f".{self.head_name}." in param_name

    def _file_name(self, param_name: str) -> str:
        """Parameter name in files: independent of the name the adapter has inside this model."""
        return param_name.replace(f".{self.enc_name}.", f".{ENCODER}.").replace(f".{self.head_name}.",
                                                                               f".{TRANSFER}.")

    # -- parameters ------------------------------------------------------------
    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.lm.model.named_parameters() if self._own(n)]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.mem_embedding, *self.lora_parameters()]

    def named_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Trainable parameters by their name in adapter files."""
        out = {self._file_name(n): p for n, p in self.lm.model.named_parameters() if self._own(n)}
        return {"mem_embedding": self.mem_embedding, **out}

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {self._file_name(n): p.detach() for n, p in self.lm.model.named_parameters() if self._own(n)}
        out["mem_embedding"] = self.mem_embedding.detach()
        return out

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        own = {self._file_name(n): p for n, p in self.lm.model.named_parameters() if self._own(n)}
        expected = set(self.state_dict())
        if set(tensors) != expected:
            raise MemoryMismatch("adapter tensors do not match this model's layers "
                                 f"({len(set(tensors) ^ expected)} names differ)")
        with torch.no_grad():
            for n, t in tensors.items():
                target = self.mem_embedding if n == "mem_embedding" else own[n]
                if target.shape != t.shape:
                    raise MemoryMismatch(f"adapter tensor {n} has shape {tuple(t.shape)}, model wants "
                                         f"{tuple(target.shape)}")
                target.copy_(t.to(target.dtype))
        self._fingerprint = None

    def randomize_(self, std: float = 0.02, seed: int = 0) -> "UIOAdapter":
        """Random LoRA B matrices (PEFT starts them at zero): for tests that must see the LoRAs act."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in self.lm.model.named_parameters():
                if self._own(n) and "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        self._fingerprint = None
        return self

    @property
    def fingerprint(self) -> str:
        """Identifies these exact weights on this base model; memories record it."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.base_fingerprint.encode() + self.config.to_json().encode())
            if self.mode != "full":  # full-mode fingerprints stay what they were before modes existed
                h.update(f"mode={self.mode}".encode())
            if self.base != "none":
                h.update(f"base={self.base}".encode())
            for n, t in sorted(self.state_dict().items()):
                h.update(n.encode())
                h.update(t.to("cpu", torch.bfloat16).float().numpy().tobytes())  # dtype-independent
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Call after changing the weights (training)."""
        self._fingerprint = None

    # -- use ---------------------------------------------------------------------
    @contextmanager
    def encoding(self) -> Iterator[None]:
        """Switch this adapter's encoder LoRA on for the forwards inside the block."""
        with self._keeping_grad_flags():
            for m in self._lora:
                m.set_adapter(self.enc_name)
                m.enable_adapters(True)
        try:
            yield
        finally:
            with self._keeping_grad_flags():
                for m in self._lora:
                    m.enable_adapters(False)

    @contextmanager
    def _keeping_grad_flags(self) -> Iterator[None]:
        """PEFT's set_adapter/enable_adapters also flip requires_grad; training needs them untouched."""
        params = [p for m in self._lora for p in m.parameters()]
        flags = [p.requires_grad for p in params]
        try:
            yield
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)

    def transfer(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transfer head: normed hidden states (..., hidden) -> pre-RoPE K and V (..., kv_heads*head_dim)."""
        attn = body(self.lm).layers[layer].self_attn
        return _with_lora(attn.k_proj, self.head_name, hidden), _with_lora(attn.v_proj, self.head_name, hidden)

    def transfer_delta(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The transfer head's LoRA alone (no k_proj/v_proj): the correction added to a base method's slots."""
        attn = body(self.lm).layers[layer].self_attn
        return _lora_only(attn.k_proj, self.head_name, hidden), _lora_only(attn.v_proj, self.head_name, hidden)

    # -- files -------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> None:
        """``dtype`` (e.g. bf16 for shipped files) leaves the fingerprint unchanged: it is taken in bf16."""
        meta = {"format": "tome-uio-adapter-1", "config": self.config.to_json(),
                "base_fingerprint": self.base_fingerprint, "base_model": self.lm.name,
                "fingerprint": self.fingerprint, "encoder_mode": self.mode,
                "memory_base": self.base, **(extra or {})}
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        save_file({n: t.to(dtype or t.dtype).contiguous() for n, t in self.state_dict().items()}, str(tmp),
                  metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, lm: LoadedModel, path: str | Path, name: str | None = None) -> "UIOAdapter":
        meta, tensors = read_adapter_file(lm, path)
        adapter = cls(lm, MemoryConfig.from_json(meta["config"]), name=name, mode=meta.get("encoder_mode", "full"),
                      base=meta.get("memory_base", "none"))
        adapter.load_state_dict(tensors)
        return adapter

    def adopt(self, path: str | Path) -> dict[str, str]:
        """Take the weights of another adapter file of this model that differs at most in its segment length.

        The parameters do not depend on l (M = l / ratio slots share one <mem> embedding), so an adapter
        trained on short segments can start a run on long ones (the curriculum across runs). -> the file's
        metadata (its training history)."""
        meta, tensors = read_adapter_file(self.lm, path)
        theirs = json.loads(meta["config"])
        ours = json.loads(self.config.to_json())
        keep = {k: v for k, v in ours.items() if k not in ("segment_len", "num_mem")}
        differ = {k: (theirs.get(k), v) for k, v in keep.items() if theirs.get(k) != v}
        if theirs["segment_len"] // theirs["num_mem"] != self.config.ratio:
            differ["ratio"] = (theirs["segment_len"] // theirs["num_mem"], self.config.ratio)
        for key, default, mine in (("encoder_mode", "full", self.mode), ("memory_base", "none", self.base)):
            if meta.get(key, default) != mine:
                differ[key] = (meta.get(key, default), mine)
        if differ:
            raise MemoryMismatch(f"adapter {Path(path).name} differs from this one in more than its segment "
                                 f"length: {differ} (file, this)")
        self.load_state_dict(tensors)
        return meta


def adapter_fits(lm: LoadedModel, path: str | Path) -> bool:
    """Whether the adapter file at ``path`` was trained on ``lm``'s weights (reads the file's header only)."""
    with safe_open(str(path), framework="pt") as f:
        return _mismatch(lm, path, f.metadata() or {}) is None


def adapter_ratio(path: str | Path) -> int | None:
    """The compression ratio (l / M) an adapter file was saved for, from its header; None if it has none."""
    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get("config")
    return MemoryConfig.from_json(text).ratio if text else None


def read_adapter_file(lm: LoadedModel, path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """An adapter file's metadata and tensors, once it is known to be one made for ``lm``'s weights."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        problem = _mismatch(lm, path, meta)
        if problem:
            raise MemoryMismatch(problem)
        return meta, {k: f.get_tensor(k) for k in f.keys()}


def _mismatch(lm: LoadedModel, path: str | Path, meta: dict[str, str]) -> str | None:
    """Why an adapter file with this header cannot serve ``lm`` (None: it can)."""
    if meta.get("format") != "tome-uio-adapter-1":
        return f"{path} is not a Tome UIO adapter file"
    base = base_fingerprint(lm)
    if meta["base_fingerprint"] != base:
        return (f"adapter {Path(path).name} was trained for {meta.get('base_model')!r} "
                f"({meta['base_fingerprint'][:12]}), not for the loaded {lm.name!r} ({base[:12]})")
    return None


def _lora_only(layer: LoraLayer, name: str, x: torch.Tensor) -> torch.Tensor:
    a, b = layer.lora_A[name], layer.lora_B[name]
    return b(a(layer.lora_dropout[name](x.to(a.weight.dtype)))) * layer.scaling[name]


def _with_lora(layer: LoraLayer, name: str, x: torch.Tensor) -> torch.Tensor:
    out = layer.base_layer(x)
    a, b = layer.lora_A[name], layer.lora_B[name]
    return out + b(a(layer.lora_dropout[name](x.to(a.weight.dtype)))).to(out.dtype) * layer.scaling[name]
