"""Policies for the recent cache (the stored memories are never evicted) and the cache that applies them."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from uio.cache.attention_gate import AttentionGate
from uio.cache.base import CachePolicy, LayerView, PolicyCache
from uio.cache.full import FullCache
from uio.cache.h2o import H2O
from uio.cache.streaming import StreamingLLM

POLICIES = ("full", "streaming", "h2o", "gate")
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
# Models whose shipped gate cache_policy="auto" applies (the one place this is decided). A shipped gate
# stays selectable by name everywhere; "auto" uses it only where it measured no worse for the default
# answer (TTFT, answers): docs/GATE.md "The default". The default model's gate is on by default (issue 6);
# SmolLM2's changed answers on the default path, so it is opt-in.
AUTO_GATES = frozenset({"qwen"})


def gate_weights_path(model_name: str) -> Path:
    """Where the shipped gate of a base model lives (uio/weights/gate-<name>.safetensors)."""
    return WEIGHTS_DIR / f"gate-{model_name}.safetensors"


def gate_fits(path: Path, model) -> bool:
    """Whether the gate file at ``path`` has the shape of ``model`` (layers, hidden size, KV heads).

    Reads only the file's metadata. A gate named for a model but of another shape (a test model run
    under the default model's name) must not be applied to it.
    """
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        cfg = json.loads((f.metadata() or {}).get("config", "{}"))
    c = model.config
    return (cfg.get("hidden_size"), cfg.get("num_layers"), cfg.get("kv_heads")) == (
        c.hidden_size, c.num_hidden_layers, c.num_key_value_heads)


def make_policy(name: str, target_eviction: float | None = None, gate_path: Path | None = None,
                model_name: str | None = None, sink: int = 4, gate_window: float = 0.0) -> CachePolicy:
    """A policy by name. ``target_eviction`` (0..1) sets every policy's budget so they compare at equal eviction.

    "gate" loads ``gate_path`` (default: the shipped gate of ``model_name``); a missing file raises
    FileNotFoundError saying how to train one. ``gate_window``: the share of the budget the gate keeps as a
    window of the newest tokens (``AttentionGate.window_share``; needs a target).
    """
    if name == "full":
        return FullCache()
    if target_eviction is not None and not 0.0 <= target_eviction < 1.0:
        raise ValueError(f"target_eviction must be in [0, 1), not {target_eviction}")
    if name == "streaming":
        return StreamingLLM(target_eviction=target_eviction if target_eviction is not None else 0.5, sink=sink)
    if name == "h2o":
        return H2O(target_eviction=target_eviction if target_eviction is not None else 0.5)
    if name == "gate":
        from uio.model import embedded_key

        if model_name is not None:
            model_name = embedded_key(model_name) or model_name  # "SmolLM2-135M-Instruct" -> "smollm2"
        if gate_path is None:
            if model_name is None:
                raise ValueError("the gate policy needs gate_path or model_name")
            gate_path = gate_weights_path(model_name)
        gates = _gates(Path(gate_path), model_name)
        threshold = gates.threshold_for(target_eviction) if target_eviction is not None else None
        if threshold is not None and gate_window > 0:
            return AttentionGate(target_eviction=target_eviction, weights=gates, window_share=gate_window)
        if threshold is not None:  # calibrated: a fixed threshold, decisions made once per token
            return AttentionGate(weights=gates, threshold=threshold)
        return AttentionGate(target_eviction=target_eviction, weights=gates)
    raise ValueError(f"unknown cache policy {name!r}; choose one of {', '.join(POLICIES)}")


def _gates(path: Path, model_name: str | None):
    """The gate weights of ``path``, read from disk once per file version (a policy is made per question)."""
    from uio.gate import AttentionGates

    if not path.is_file():
        return AttentionGates.load(path, base_model=model_name)  # raises, saying how to train one
    return _load_gates(path, path.stat().st_mtime_ns, model_name)


@lru_cache(maxsize=4)
def _load_gates(path: Path, _version: int, model_name: str | None):
    from uio.gate import AttentionGates

    return AttentionGates.load(path, base_model=model_name)  # read-only afterwards: policies share it


__all__ = ["AUTO_GATES", "POLICIES", "AttentionGate", "CachePolicy", "FullCache", "H2O", "LayerView", "PolicyCache",
           "StreamingLLM", "gate_fits", "gate_weights_path", "make_policy"]
