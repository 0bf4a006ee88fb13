"""The cache-policy setting end to end: config, the service's ask(), and the figures it reports."""
import pytest

from tests.conftest import make_pdf


def test_cache_policy_settings_come_from_environment():
    from tome import Config

    cfg = Config.from_env({"TOME_CACHE_POLICY": "h2o", "TOME_CACHE_EVICTION": "0.3"})
    assert cfg.cache_policy == "h2o" and cfg.cache_eviction == pytest.approx(0.3)
    assert Config().cache_policy == "auto" and Config().cache_eviction == pytest.approx(0.6)


def test_policy_names_are_checked_and_auto_falls_back_to_full(tome_tiny):
    # tome_tiny runs a tiny Llama under the default model's name: the shipped qwen gate does not fit it
    assert tome_tiny.cache_policy("auto").name == "full" and tome_tiny.cache_policy("full").name == "full"
    assert tome_tiny.cache_policy("streaming", 0.5).name == "streaming"
    with pytest.raises(ValueError, match="unknown cache policy"):
        tome_tiny.cache_policy("lru")
    with pytest.raises(ValueError, match="no Attention-Gate weights"):
        tome_tiny.cache_policy("gate")
    with pytest.raises(ValueError, match="eviction"):
        tome_tiny.cache_policy("h2o", 1.5)


@pytest.mark.parametrize("mode", ["uncompressed", "compressed"])
def test_ask_under_a_policy_holds_fewer_bytes(tome_tiny, tmp_path, mode):
    pages = [f"Page {i}. " + "The tide came in over the rocks and went out again. " * 12 for i in range(3)]
    doc = tome_tiny.ingest(make_pdf(tmp_path / "tides.pdf", pages)).document
    ask = dict(max_new_tokens=4, mode=mode)
    full = list(tome_tiny.ask([doc.id], "When did the tide come in?", cache_policy="full", **ask))[-1]
    pruned = list(tome_tiny.ask([doc.id], "When did the tide come in?", cache_policy="streaming",
                                cache_eviction=0.5, **ask))[-1]
    assert full.stats["cache_policy"] == "full" and pruned.stats["cache_policy"] == "streaming"
    assert pruned.stats["eviction_rate"] > 0.3
    assert pruned.stats["kv_bytes"] < full.stats["kv_bytes"]
    if mode == "compressed":  # memories are never evicted: at least their bytes stay held
        memory = tome_tiny.memory(doc)
        assert pruned.stats["kv_bytes"] >= memory.nbytes
    stored = tome_tiny.store.messages(pruned.conversation_id)[-1]
    assert stored.stats["cache_policy"] == "streaming"


def test_smollm2_gate_ships_opt_in(tome_smol, tmp_path):
    assert tome_smol.cache_policy("gate", 0.5).name == "gate"  # its shipped gate fits the loaded model
    assert tome_smol.cache_policy("auto").name == "full"  # not in AUTO_GATES: it moved answers on the default path
    text = "The lighthouse keeper of Varrow Point is named Ilse Marrick. " + "Waves broke on the rocks. " * 60
    doc = tome_smol.ingest(make_pdf(tmp_path / "varrow.pdf", [text])).document
    final = list(tome_smol.ask([doc.id], "Who is the lighthouse keeper of Varrow Point?", max_new_tokens=12,
                               cache_policy="gate"))[-1]
    assert final.stats["cache_policy"] == "gate" and 0.2 < final.stats["eviction_rate"] < 0.9


def test_auto_applies_a_shipped_gate_only_to_the_models_listed(tmp_path, db_url):
    from tests.conftest import make_tome
    from uio.cache import AUTO_GATES

    t = make_tome(tmp_path, db_url, None)  # the default model (qwen), not loaded: its gate file is read only
    try:
        assert t.cache_policy("gate", 0.6).name == "gate"  # selectable by name (its file: uio/weights/gate-qwen)
        assert AUTO_GATES == {"qwen"}  # issue 6: the default model's gate is on by default
        assert t.cache_policy("auto").name == "gate"
    finally:
        t.store.close()


def test_compressor_override_serves_its_name_and_ratio_inside_the_block_only(tome_tiny):
    from uio.compress import make_compressor

    models = tome_tiny.models
    before = models.compressor(8, "kvzip")
    pooled = make_compressor("kvzip", 8, pool=5)
    with models.compressor_override(pooled):
        assert models.compressor(8, "kvzip") is pooled
        assert models.compressor(8, "kvzip").identity(tome_tiny.lm) != before.identity(tome_tiny.lm)
        assert models.compressor(32, "kvzip") is not pooled  # another ratio is untouched
    assert models.compressor(8, "kvzip") is before
    snap = make_compressor("snapkv", 8)
    with models.compressor_override(snap):  # none made before: none left after
        assert models.compressor(8, "snapkv") is snap
    assert models.compressor(8, "snapkv") is not snap
