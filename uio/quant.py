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


def _quantisable(model: torch.nn.Module) -> set[str]:
    """Linear layers of the decoder stack, LoRA's own small matrices left in full precision (they are tiny)."""
    prefix = "model."
    return {name for name, m in model.named_modules()
            if type(m) is torch.nn.Linear and name.startswith(prefix) and ".lora_" not in name}


def int8_copy(lm: LoadedModel) -> LoadedModel:
    """``lm`` with its decoder's Linear layers dynamically quantised to int8 (CPU, float32 models only)."""
    if lm.device.type != "cpu" or lm.dtype != torch.float32:
        raise ValueError("int8 dynamic quantisation runs on a float32 model on the CPU "
                         f"(this one is {lm.dtype} on {lm.device})")
    if body(lm) is not lm.model.model:
        raise ValueError("unexpected model layout")
    # Share every tensor: only the module tree is copied, then its Linear modules are swapped for int8 ones.
    memo = {id(t): t for t in [*lm.model.parameters(), *lm.model.buffers()]}
    model = copy.deepcopy(lm.model, memo)
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; it still works
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(model, _quantisable(model), dtype=torch.qint8, inplace=True)
    return replace(lm, name=f"{lm.name}-int8", model=model)


def int8_adapter(adapter: UIOAdapter, lm8: LoadedModel | None = None) -> UIOAdapter:
    """The same adapter, driving the int8 copy: the copy's own LoRA layers (sharing the adapter's weights)."""
    lm8 = lm8 or int8_copy(adapter.lm)
    view = copy.copy(adapter)
    view.lm = lm8
    view._lora = [m for m in lm8.model.modules() if isinstance(m, LoraLayer)]
    return view


def int8_encoder(adapter: UIOAdapter, batch_size: int = 4) -> Encoder:
    """An encoder making ``adapter``'s memories through an int8 copy of its base model."""
    return Encoder(int8_adapter(adapter), batch_size=batch_size)
