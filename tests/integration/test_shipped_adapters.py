"""The UIO adapters shipped in uio/adapters/: small, made for Tome's segments and their own model, and answering."""
import json

import pytest
from safetensors import safe_open

from tests.conftest import MODELS_DIR
from uio.shipped import ADAPTERS_DIR, adapter_path

BASE_MODELS = {"qwen": "Qwen2.5-Coder-0.5B-Instruct", "smollm2": "SmolLM2-135M-Instruct"}
SHIPPED = sorted(ADAPTERS_DIR.glob("*.safetensors"))


def _meta(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_shipped_adapters_are_small_and_cut_like_tome():
    from tome.config import Config

    assert {adapter_path(key, r) for key in BASE_MODELS for r in (8, 32)} <= set(SHIPPED)
    for path in SHIPPED:
        key, ratio = path.stem.rsplit("-", 1)
        meta, size = _meta(path), path.stat().st_size
        cfg = json.loads(meta["config"])
        assert size <= 8 * 2**20, (path.name, size)
        assert meta["base_model"] == BASE_MODELS[key]
        assert cfg["segment_len"] == Config.__dataclass_fields__["segment_len"].default  # Tome's default cut
        assert f"{cfg['segment_len'] // cfg['num_mem']}x" == ratio
        assert meta["encoder_mode"] == "memory" and meta["memory_base"] == "kvzip"  # the CPU recipe's kind
        history = json.loads(meta["started_from"]) if "started_from" in meta else {}
        steps = int(meta["trained_steps"]) + int(history.get("trained_steps") or 0)
        assert steps >= 100, (path.name, steps)  # trained, not a placeholder


def test_an_adapter_is_refused_by_another_model(smollm2, tiny_llama, tmp_path, db_url):
    from tests.conftest import make_tome
    from uio.adapter import UIOAdapter, adapter_fits
    from uio.memory import MemoryMismatch

    with pytest.raises(MemoryMismatch, match="trained for 'Qwen2.5-Coder"):
        UIOAdapter.load(smollm2, adapter_path("qwen", 8))
    assert adapter_fits(smollm2, adapter_path("smollm2", 8)) and not adapter_fits(smollm2, adapter_path("qwen", 8))
    # Another model under the key "qwen" (the default model's name, a tiny test model here) is not served
    # the shipped adapter: its uio memories come from the seeded untrained one, and say so.
    t = make_tome(tmp_path, db_url, tiny_llama, segment_len=64)
    try:
        assert t.models.key == "qwen" and t.models.adapter_file(8) is None and not t.adapter_trained(8)
    finally:
        t.store.close()


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [8, 32])
def test_the_qwen_adapter_finds_a_pass_key_through_tome(qwen, tmp_path, ratio):
    """A 2K-token pass-key PDF, compressed by the shipped adapter, asked in compressed mode (memories alone:
    no passage as text, which would hand the key over)."""
    from bench.qa import passkey
    from tome import Config, Tome

    info = passkey.passkey_pdf(tmp_path / "notes.pdf", qwen.tokenizer, 2048, 0.5, seed=2050)
    tome = Tome(Config(data_dir=tmp_path / "data", models_dir=MODELS_DIR, compress=False, max_new_tokens=16,
                       memory_excerpts=0),
                lm=qwen)
    try:
        doc = tome.ingest(info["path"]).document
        mem = tome.memory(doc, compressor="uio", ratio=ratio)
        assert mem.fingerprint == _meta(adapter_path("qwen", ratio))["fingerprint"]
        final = list(tome.ask([doc.id], passkey.QUESTION, mode="compressed", compressor="uio", ratio=ratio))[-1]
        assert final.stats["compressor"] == "uio" and final.stats["adapter_trained"]
        assert passkey.grade(final.text, info["key"]), final.text
    finally:
        tome.store.close()
