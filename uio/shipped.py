"""Where the weight files that ship with Tome live: the one rule uio.cache, uio.train and the service read.

A file is named for the base model's key (``uio.model.embedded_key``: "qwen", "smollm2"):

- Attention-Gates: ``uio/weights/gate-<key>.safetensors`` (trained by ``python -m uio.train.gate``);
- UIO adapters: ``uio/adapters/<key>-<ratio>x.safetensors`` (trained by ``python -m uio.train``).

The functions read the folders at call time, so a test may point them elsewhere.
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ADAPTERS_DIR = Path(__file__).resolve().parent / "adapters"


def gate_path(key: str) -> Path:
    """The Attention-Gate shipped for base model ``key`` (the file may not exist)."""
    return WEIGHTS_DIR / f"gate-{key}.safetensors"


def adapter_path(key: str, ratio: int) -> Path:
    """The UIO adapter shipped for base model ``key`` at compression ``ratio`` (the file may not exist)."""
    return ADAPTERS_DIR / f"{key}-{ratio}x.safetensors"
