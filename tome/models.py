"""The models the service uses: the base LM (loaded once, lazily), UIO adapters per ratio, cache policies.

Where shipped weights live is decided in ``uio.shipped``; this module only picks
the configured file or the shipped one and refuses a file of another shape.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from tome.config import Config
from tome.fairlock import FairLock

log = logging.getLogger("tome")


class Models:
    """The loaded base model and its adapters. One instance per service; switching models clears them."""

    def __init__(self, config: Config, lm=None, adapter=None):
        self.config = config
        self._lm = lm
        self.lm_given = lm is not None  # a model handed over in code travels to Ray actors; a named one is loaded there
        self._adapters: dict[int, object] = {adapter.config.ratio: adapter} if adapter else {}
        self._compressors: dict[tuple[str, int], object] = {}
        self._lock = threading.Lock()
        # One generation or compression at a time uses the model: CPU cores are the bottleneck,
        # and the encoder switches the model's adapters on while it runs. Fair, so that a question
        # asked during background compression goes next, not after the worker's next chunks.
        self.lock = FairLock()

    @property
    def lm(self):
        if self._lm is None:
            with self._lock:
                if self._lm is None:
                    from uio.model import load_model
                    from uio.runtime import set_threads
                    from uio.torch_thread import run_on_torch

                    set_threads(self.config.threads)
                    lm = run_on_torch(load_model, self.config.model, self.config.models_path,
                                      self.config.device, self.config.dtype)
                    if self.config.pack_weights:
                        from uio.packed import pack_linears, shortlist_head

                        run_on_torch(pack_linears, lm.model)
                        if self.config.shortlist_head:
                            run_on_torch(shortlist_head, lm.model)
                    self._lm = lm
        return self._lm

    @property
    def loaded(self):
        """The model if it is loaded already, else None (never loads)."""
        return self._lm

    @property
    def name(self) -> str:
        return self._lm.name if self._lm else self.config.model

    @property
    def key(self) -> str | None:
        """The embedded model's short name ("qwen", "smollm2"), or None for any other model."""
        from uio.model import embedded_key

        return embedded_key(self.config.model)

    # -- UIO adapters ----------------------------------------------------------
    def adapter_file(self, ratio: int | None = None) -> Path | None:
        """The configured adapter, else the one shipped for this model and ratio (if any).

        A shipped adapter serves only the weights it was trained on: another model under the same key (a
        fine-tune, a test's tiny model) gets none, as "auto" gives it no learned scorer; a configured file is
        kept and refuses such a model with a clear error when loaded."""
        from uio.adapter import adapter_fits
        from uio.shipped import adapter_path

        ratio = ratio or self.config.ratio
        if self.config.adapter and ratio == self._configured_ratio():
            return self.config.adapter
        shipped = adapter_path(self.key, ratio) if self.key else None
        if not (shipped and shipped.is_file()):
            return None
        return shipped if self._lm is None or adapter_fits(self._lm, shipped) else None

    def _configured_ratio(self) -> int:
        """The ratio the configured adapter file serves: the one in its header (a 32x file given with the
        default ratio 8 serves 32x, it is not silently passed over for the shipped one), else the config's."""
        from safetensors import SafetensorError

        from uio.adapter import adapter_ratio

        path = self.config.adapter
        try:
            found = adapter_ratio(path) if path and Path(path).is_file() else None
        except (SafetensorError, OSError, ValueError, KeyError, TypeError):  # not an adapter file (or a bad
            found = None  # header): loading it for the config's ratio says why, clearly
        return found or self.config.ratio

    def adapter_trained(self, ratio: int | None = None) -> bool:
        return self.adapter_file(ratio) is not None

    def adapter_for(self, ratio: int | None = None):
        """The UIO adapter for a compression ratio (loaded once); untrained when none is shipped."""
        ratio = ratio or self.config.ratio
        if ratio not in self._adapters:
            from uio.torch_thread import run_on_torch

            lm = self.lm
            with self._lock:
                if ratio not in self._adapters:
                    # on the torch thread: injecting the LoRA layers and reading the file are torch work
                    self._adapters[ratio] = run_on_torch(self._load_adapter, lm, ratio)
        return self._adapters[ratio]

    def _load_adapter(self, lm, ratio: int):
        import torch

        from uio.adapter import UIOAdapter
        from uio.memory import MemoryConfig

        seg = self._check_ratio(ratio)
        path = self.adapter_file(ratio)
        if path is None:
            log.warning("no trained UIO adapter for %s at %dx: its memories will be poor", lm.name, ratio)
            # Seeded: the same untrained adapter (and fingerprint) in every process, so its memories made
            # before a restart are found again instead of being made anew beside the old file.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return UIOAdapter(lm, MemoryConfig(segment_len=seg, num_mem=seg // ratio))
        from safetensors import SafetensorError

        try:
            adapter = UIOAdapter.load(lm, path)
        except SafetensorError as e:  # TOME_ADAPTER names some other file
            raise ValueError(f"{path} is not a UIO adapter file (safetensors: {e})") from e
        if adapter.config.segment_len != seg:
            # Books are cut at config.segment_len; the encoder refuses longer segments.
            raise ValueError(f"adapter {path.name} was trained for {adapter.config.segment_len}-token segments, "
                             f"but TOME_SEGMENT_LEN is {seg}; set them equal or use another adapter")
        return adapter

    def _check_ratio(self, ratio: int) -> int:
        """The segment length, once ``ratio`` is known to divide it (M = l / ratio slots per segment)."""
        seg = self.config.segment_len
        if seg % ratio:
            raise ValueError(f"ratio {ratio} does not divide the segment length {seg}")
        return seg

    # -- compressors ------------------------------------------------------------
    def compressor_name(self, name: str | None = None) -> str:
        """The registered compressor that ``name`` (default: the config's) stands for; "auto" resolved."""
        from uio.compress import resolve_compressor

        return resolve_compressor(name or self.config.compressor, self.key, self._lm)

    def compressor(self, ratio: int | None = None, name: str | None = None):
        """The compressor that makes (and identifies) memories at ``ratio`` (loaded once per name and ratio)."""
        from uio.compress import COMPRESSORS, make_compressor

        name, ratio = self.compressor_name(name), ratio or self.config.ratio
        if (name, ratio) not in self._compressors:
            if name == "uio":
                made = make_compressor("uio", ratio, adapter=self.adapter_for(ratio),
                                       batch_size=self.config.compress_batch)
            else:
                self._check_ratio(ratio)
                kw = {"share": self.config.memory_share} if COMPRESSORS[name].shares else {}
                made = make_compressor(name, ratio, **kw)
            self._compressors[(name, ratio)] = made
        return self._compressors[(name, ratio)]

    @contextmanager
    def compressor_override(self, compressor) -> Iterator[None]:
        """Inside the block, ``compressor`` (e.g. one with other parameters) serves its name and ratio: memories
        are made and read with it (its own identity); the one before comes back after."""
        key = (compressor.name, compressor.ratio)
        before = self._compressors.get(key)
        self._compressors[key] = compressor
        try:
            yield
        finally:
            self._compressors.pop(key, None)
            if before is not None:
                self._compressors[key] = before

    def trained(self, ratio: int | None = None, name: str | None = None) -> bool:
        """Whether memories of this compressor can be expected to answer: always, except an untrained UIO adapter."""
        return self.compressor_name(name) != "uio" or self.adapter_trained(ratio)

    # -- cache policies ----------------------------------------------------------
    def cache_policy(self, name: str | None = None, eviction: float | None = None):
        """The recent-cache policy object for ``name`` (default: the config's; "auto" resolved in uio.cache)."""
        from uio.cache import resolve_policy
        from uio.torch_thread import run_on_torch

        name = (name or self.config.cache_policy).lower()
        eviction = self.config.cache_eviction if eviction is None else eviction
        # on the torch thread: the gate's weights are read (and converted) there the first time
        return run_on_torch(resolve_policy, name, eviction, model_key=self.key or self.config.model,
                            model=self._lm.model if self._lm is not None else None)

    def switch(self, name: str) -> bool:
        """Use base model ``name`` from now on; False when it is the one loaded already."""
        with self.lock, self._lock:
            if name == self.config.model and self._lm is not None:
                return False
            self.config = replace(self.config, model=name, adapter=None)
            self._lm, self._adapters, self._compressors = None, {}, {}
            return True

