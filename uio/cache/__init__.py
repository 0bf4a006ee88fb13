"""Policies for the recent cache (the stored memories are never evicted), the cache that applies them,
and the one place a policy is chosen by name (``resolve_policy``; "auto" is decided here and nowhere else).

A policy is a dataclass in its own file (``full``, ``streaming``, ``h2o``, ``attention_gate``) that scores
entries per KV head; ``base.CachePolicy`` does the rest. Adding one: write its file and list it in
``POLICIES``; the CLI, the config and the UI read the names from ``policy_choices()``.
"""
from __future__ import annotations

from pathlib import Path

from uio import registry
from uio.cache.attention_gate import AttentionGate, load_gates
from uio.cache.base import CachePolicy, LayerView, PolicyCache, top_per_head
from uio.cache.full import ChunkedFullCache, FullCache
from uio.cache.h2o import H2O
from uio.cache.streaming import StreamingLLM

# name -> policy class, in the order the choices are offered.
POLICIES: dict[str, type[CachePolicy]] = {cls.name: cls for cls in (FullCache, StreamingLLM, H2O, AttentionGate)}
# Models whose shipped gate cache_policy="auto" applies (the one place this is decided). A shipped gate
# stays selectable by name everywhere; "auto" uses it only where it measured no worse for the default
# answer (TTFT, answers): docs/GATE.md "The default". The default model's gate is on by default (issue 6);
# SmolLM2's changed answers on the default path, so it is opt-in.
AUTO_GATES = frozenset({"qwen"})


def policy_choices() -> tuple[str, ...]:
    """Every name resolve_policy accepts: "auto", then the registered policies."""
    return registry.choices(POLICIES)


def policy_label(name: str) -> str:
    """What a UI shows for one of ``policy_choices()``."""
    return registry.label(POLICIES, name, "Automatic (Attention-Gate where enabled, else full)")


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


def _model_key(model_key: str | None) -> str | None:
    """"SmolLM2-135M-Instruct" -> "smollm2"; a name no embedded model answers to stays as given."""
    if not model_key:
        return None
    from uio.model import embedded_key

    return embedded_key(model_key) or model_key


def shipped_gate(model_key: str | None, model=None) -> Path | None:
    """The gate shipped for ``model_key`` (uio.shipped.gate_path), if the file exists and, when ``model``
    (the loaded transformers model) is given, fits it."""
    from uio.shipped import gate_path

    key = _model_key(model_key)
    path = gate_path(key) if key else None
    if not (path and path.is_file()):
        return None
    return path if model is None or gate_fits(path, model) else None


def resolve_policy(name: str, eviction: float, model_key: str | None = None, model=None, *,
                   gate_file: Path | None = None, gate_window: float = 0.0) -> CachePolicy:
    """The policy object for ``name`` (one of ``policy_choices()``, any case) at ``eviction`` (0..1, the
    share of the recent tokens it drops; FullCache ignores it).

    "auto" is the Attention-Gate where one ships for ``model_key`` (a model key or name), fits ``model``
    (when given: the loaded transformers model) and the model is in ``AUTO_GATES``; else the full cache.
    "gate" raises ValueError where no fitting gate ships. ``gate_file``: gate weights to use instead of the
    shipped ones (benches; a missing file raises FileNotFoundError saying how to train one).
    ``gate_window``: ``AttentionGate.window_share``. The gate file names its base model: a gate of another
    model is refused, not misapplied.
    """
    name = name.lower()
    if name not in policy_choices():
        raise ValueError(f"unknown cache policy {name!r}; use one of {', '.join(policy_choices())}")
    if not 0.0 <= eviction < 1.0:
        raise ValueError(f"cache eviction must be in [0, 1), got {eviction}")
    key = _model_key(model_key)
    options = {}
    if name in ("auto", "gate"):
        # Looked up once per call: gate_fits reads the file's header.
        path = Path(gate_file) if gate_file is not None else shipped_gate(key, model)
        if name == "auto":
            name = "gate" if path is not None and key in AUTO_GATES else "full"
        elif path is None:
            raise ValueError(f"no Attention-Gate weights ship for {model_key!r}; pick another cache policy "
                             "(docs/GATE.md says how to train them)")
        if name == "gate":
            options = {"weights": load_gates(path, key), "window_share": gate_window}
    return POLICIES[name].at(eviction, **options)


__all__ = ["AUTO_GATES", "POLICIES", "AttentionGate", "CachePolicy", "ChunkedFullCache", "FullCache", "H2O",
           "LayerView", "PolicyCache", "StreamingLLM", "gate_fits", "load_gates", "policy_choices", "policy_label",
           "resolve_policy", "shipped_gate", "top_per_head"]
