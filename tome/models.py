"""The models the service uses: the base LM (loaded once, lazily), UIO adapters per ratio, cache policies.

Where shipped weights live is decided in ``uio.shipped``; this module only picks
the configured file or the shipped one and refuses a file of another shape.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

from tome.config import Config

log = logging.getLogger("tome")


class Models:
    """The loaded base model and its adapters. One instance per service; switching models clears them."""

    def __init__(self, config: Config, lm=None, adapter=None):
        self.config = config
        self._lm = lm
        self.lm_given = lm is not None  # a model handed over in code travels to Ray actors; a named one is loaded there
        self._adapters: dict[int, object] = {adapter.config.ratio: adapter} if adapter else {}
        self._lock = threading.Lock()
        # One generation or compression at a time uses the model: CPU cores are the bottleneck,
        # and the encoder switches the model's adapters on while it runs.
        self.lock = threading.RLock()

    @property
    def lm(self):
        if self._lm is None:
            with self._lock:
                if self._lm is None:
                    from uio.model import load_model
                    from uio.runtime import set_threads

                    set_threads(self.config.threads)
                    self._lm = load_model(self.config.model, self.config.models_path,
                                          self.config.device, self.config.dtype)
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
        """The configured adapter, else the one shipped for this model and ratio (if any)."""
        try:
            from uio.shipped import adapter_path
        except ImportError:  # TEMP until uio.shipped lands
            def adapter_path(key, ratio):
                return Path(__file__).resolve().parents[1] / "uio" / "adapters" / f"{key}-{ratio}x.safetensors"

        ratio = ratio or self.config.ratio
        if self.config.adapter and ratio == self.config.ratio:
            return self.config.adapter
        shipped = adapter_path(self.key, ratio) if self.key else None
        return shipped if shipped and shipped.is_file() else None

    def adapter_trained(self, ratio: int | None = None) -> bool:
        return self.adapter_file(ratio) is not None

    def adapter_for(self, ratio: int | None = None):
        """The UIO adapter for a compression ratio (loaded once); untrained when none is shipped."""
        ratio = ratio or self.config.ratio
        if ratio not in self._adapters:
            lm = self.lm
            with self._lock:
                if ratio not in self._adapters:
                    self._adapters[ratio] = self._load_adapter(lm, ratio)
        return self._adapters[ratio]

    def _load_adapter(self, lm, ratio: int):
        from uio.adapter import UIOAdapter
        from uio.memory import MemoryConfig

        seg = self.config.segment_len
        if seg % ratio:
            raise ValueError(f"ratio {ratio} does not divide the segment length {seg}")
        path = self.adapter_file(ratio)
        if path is None:
            log.warning("no trained UIO adapter for %s at %dx: compressed answers will be poor", lm.name, ratio)
            return UIOAdapter(lm, MemoryConfig(segment_len=seg, num_mem=seg // ratio))
        adapter = UIOAdapter.load(lm, path)
        if adapter.config.segment_len != seg:
            # Books are cut at config.segment_len; the encoder refuses longer segments.
            raise ValueError(f"adapter {path.name} was trained for {adapter.config.segment_len}-token segments, "
                             f"but TOME_SEGMENT_LEN is {seg}; set them equal or use another adapter")
        return adapter

    # -- cache policies ----------------------------------------------------------
    def cache_policy(self, name: str | None = None, eviction: float | None = None):
        """The recent-cache policy object for ``name`` (default: the config's; "auto" resolved in uio.cache)."""
        try:
            from uio.cache import resolve_policy
        except ImportError:  # TEMP until uio.cache.resolve_policy lands
            resolve_policy = _old_resolve

        name = (name or self.config.cache_policy).lower()
        eviction = self.config.cache_eviction if eviction is None else eviction
        return resolve_policy(name, eviction, model_key=self.key or self.config.model,
                              model=self._lm.model if self._lm is not None else None)

    def switch(self, name: str) -> bool:
        """Use base model ``name`` from now on; False when it is the one loaded already."""
        with self.lock, self._lock:
            if name == self.config.model and self._lm is not None:
                return False
            self.config = replace(self.config, model=name, adapter=None)
            self._lm, self._adapters = None, {}
            return True


def _old_resolve(name, eviction, model_key=None, model=None):  # TEMP
    from uio.cache import AUTO_GATES, FullCache, gate_fits, gate_weights_path, make_policy

    if name not in ("auto", "full", "streaming", "h2o", "gate"):
        raise ValueError(f"unknown cache policy {name!r}")
    gate = gate_weights_path(model_key) if model_key else None
    gate = gate if gate and gate.is_file() and (model is None or gate_fits(gate, model)) else None
    if name == "auto":
        name = "gate" if gate and model_key in AUTO_GATES else "full"
    if name == "full":
        return FullCache()
    if not 0.0 <= eviction < 1.0:
        raise ValueError(f"cache eviction must be in [0, 1), got {eviction}")
    if name == "gate" and gate is None:
        raise ValueError("no Attention-Gate weights ship for this model; pick another cache policy")
    return make_policy(name, eviction, gate_path=gate, model_name=model_key)
