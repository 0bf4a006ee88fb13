"""The learned UIO encoder (``uio.encoder.Encoder`` + ``UIOAdapter``) behind the compressor interface.

The adapter decides everything: its ratio (M slots per l-token segment), its
slot rule (``uio.memory.slots_for``: min(M, n), so a short segment keeps up to
M slots) and its fingerprint, which stays the memories' fingerprint so files
written before this interface existed keep loading.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence


from uio.adapter import UIOAdapter
from uio.compress.base import Compressor, Progress, storage_dtype
from uio.encoder import Encoder
from uio.memory import Memory
from uio.model import LoadedModel


@dataclass
class UIOCompressor(Compressor):
    """Memories from a trained UIO adapter. ``ratio`` must equal the adapter's (0: take the adapter's)."""

    name: ClassVar[str] = "uio"
    label: ClassVar[str] = "UIO encoder (trained adapter)"
    version: ClassVar[str] = "1"
    ratio: int = 0
    adapter: UIOAdapter | None = field(default=None, metadata={"identity": False})
    batch_size: int = field(default=4, metadata={"identity": False})
    store: str = "16bit"

    def __post_init__(self) -> None:
        if self.adapter is None:
            raise ValueError("the 'uio' compressor needs a trained adapter: make_compressor('uio', ratio, adapter=...)")
        if self.ratio == 0:
            self.ratio = self.adapter.config.ratio
        if self.ratio != self.adapter.config.ratio:
            raise ValueError(f"adapter compresses {self.adapter.config.ratio}x, not {self.ratio}x")

    def params(self) -> dict:
        return {"adapter": self.adapter.fingerprint, "store": self.store}

    def identity(self, lm: LoadedModel) -> str:
        return self.adapter.fingerprint

    def compress(self, lm: LoadedModel, token_lists: Sequence[Sequence[int]],
                 segment_ids: Sequence[int] | None = None,
                 token_spans: Sequence[tuple[int, int]] | None = None,
                 progress: Progress | None = None) -> Memory:
        if lm.model is not self.adapter.lm.model:
            raise ValueError("the adapter is attached to another model object than the one given")
        mem = Encoder(self.adapter, batch_size=self.batch_size).compress(token_lists, segment_ids, token_spans,
                                                                         progress)
        dt = storage_dtype(lm, self.store)
        mem.keys, mem.values = mem.keys.to(dt), mem.values.to(dt)
        return mem
