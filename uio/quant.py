"""An int8 copy of the base model for CPU ingestion (torch.ao dynamic quantisation of the Linear layers).

Ingestion is the one place where a little precision buys a lot of time on a
CPU: the encoder runs every token of a library once, through the model's
Linear layers (almost all of its FLOPs), while answers keep reading the
memories with the model in full precision. Dynamic quantisation stores those
weights in int8 and quantises activations on the fly, per batch; fbgemm / x86
kernels then run the matmuls in int8.

The copy shares every tensor with the original (embeddings, norms, LoRA
weights) except the quantised Linear weights, so it costs about a quarter of
the Linear weights' fp32 size. Only the encoder uses it; memories it makes
carry the same adapter fingerprint and are read by the same decoder. How
close they are to fp32 ones is measured in bench/int8_ingest.py.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import torch
from peft.tuners.lora import LoraLayer

from uio.adapter import UIOAdapter, body
from uio.encoder import Encoder
from uio.model import LoadedModel


# The MLP's down projection reads the activations with the huge outlier channels of Llama-family
# models; one int8 scale per token flattens everything else there. Left in float it costs ~10 % of
# the int8 speed-up and lifts the values' cosine to fp32 memories from ~0.88 to ~0.98 (SmolLM2).
KEEP_FLOAT = ("down_proj",)


def _quantisable(model: torch.nn.Module, keep_float: tuple[str, ...] = KEEP_FLOAT) -> set[str]:
    """Linear layers of the decoder stack, except ``keep_float`` ones and LoRA's own small matrices."""
    prefix = "model."
    return {name for name, m in model.named_modules()
            if type(m) is torch.nn.Linear and name.startswith(prefix) and ".lora_" not in name
            and not any(name.endswith(k) or f".{k}." in name for k in keep_float)}


def int8_copy(lm: LoadedModel, keep_float: tuple[str, ...] = KEEP_FLOAT) -> LoadedModel:
    """``lm`` with its decoder's Linear layers dynamically quantised to int8 (CPU only).

    The int8 kernels take float32 activations: a float32 model shares all its
    other tensors with the copy; a bf16/fp16 one (hosts with native bf16, where
    int8 rarely pays) gets a float32 copy of them.
    """
    if lm.device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on the CPU, not on {lm.device}")
    if body(lm) is not lm.model.model:
        raise ValueError("unexpected model layout")
    if lm.dtype == torch.float32:
        # Share every tensor: only the module tree is copied, then its Linear modules are swapped for int8 ones.
        memo = {id(t): t for t in [*lm.model.parameters(), *lm.model.buffers()]}
        model = copy.deepcopy(lm.model, memo)
    else:
        model = copy.deepcopy(lm.model).float()
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; it still works
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # int8 weights with one scale per output channel; activations quantised per batch on the fly
        spec = {name: per_channel_dynamic_qconfig for name in _quantisable(model, keep_float)}
        quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    return replace(lm, name=f"{lm.name}-int8", model=model, dtype=torch.float32)


def int8_adapter(adapter: UIOAdapter, lm8: LoadedModel | None = None) -> UIOAdapter:
    """The same adapter, driving the int8 copy: the copy's own LoRA layers (sharing the adapter's weights)."""
    lm8 = lm8 or int8_copy(adapter.lm)
    view = copy.copy(adapter)
    view.lm = lm8
    view._lora = [m for m in lm8.model.modules() if isinstance(m, LoraLayer)]
    return view


class Int8Encoder(Encoder):
    """Compresses through the int8 copy; memories come out in the base model's dtype, as the decoder stores them."""

    def __init__(self, adapter: UIOAdapter, batch_size: int = 4):
        self.dtype = adapter.lm.dtype
        view = int8_adapter(adapter)
        if self.dtype != torch.float32:  # the copy is float32 throughout, its <mem> embedding too
            view.mem_embedding = torch.nn.Parameter(adapter.mem_embedding.detach().float(), requires_grad=False)
        super().__init__(view, batch_size=batch_size)

    def forward(self, batch):
        keys, values, slots = super().forward(batch)
        return keys.to(self.dtype), values.to(self.dtype), slots


def int8_encoder(adapter: UIOAdapter, batch_size: int = 4) -> Encoder:
    """An encoder making ``adapter``'s memories through an int8 copy of its base model."""
    return Int8Encoder(adapter, batch_size=batch_size)
