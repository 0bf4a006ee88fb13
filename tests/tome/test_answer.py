"""The answer path: where the time to the first token went, the memory budget."""
from storage.files import forget_verified
from tests.conftest import make_pdf
from tome import Config


PAGES = [f"Page {i}. " + "The keeper lit the lantern at the north wall before the storm. " * 12 for i in range(1, 5)]


def test_ask_reports_where_the_time_to_first_token_went(tome_tiny, tmp_path):
    doc = tome_tiny.ingest(make_pdf(tmp_path / "b.pdf", PAGES)).document
    tome_tiny.memories.cache.clear()
    forget_verified()
    final = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1]
    t = final.stats["timing"]
    phases = ("lookup", "read", "select", "assembly", "prefill", "first_decode")
    assert set(phases) <= set(t) and all(t[p] >= 0 for p in phases)
    assert t["read"] > 0 and t["prefill"] > 0 and t["assembly"] > 0
    assert sum(t[p] for p in phases) <= t["ttft_s"]
    again = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1].stats["timing"]
    assert "read" not in again  # the memories came from the LRU
    plain = list(tome_tiny.ask([doc.id], "Who lit the lantern?"))[-1].stats["timing"]
    assert "assembly" not in plain and plain["prefill"] > 0
    assert sum(v for k, v in plain.items() if k != "ttft_s") <= plain["ttft_s"]


def test_memory_budget_caps_the_slots_a_compressed_answer_attends_to(tome_tiny, tmp_path):
    from dataclasses import replace

    doc = tome_tiny.ingest(make_pdf(tmp_path / "b.pdf", PAGES)).document
    full = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1]
    tome_tiny.config = replace(tome_tiny.config, memory_budget=16)
    capped = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1]
    assert full.stats["prefix_len"] > 16 >= capped.stats["prefix_len"] > 0
    assert capped.truncated and len(capped.sources) < len(full.sources)


def test_default_memory_budget_is_sized_to_the_model_on_cpu(tome_tiny, smollm2, qwen):
    from dataclasses import replace

    from uio.model import flat_ttft_slots

    assert Config().memory_budget == -1  # auto
    # The rule: parameters outside the embedding tables / (8 * head_dim * heads * layers), floored.
    c = smollm2.model.config
    params = sum(p.numel() for n, p in smollm2.model.named_parameters()
                 if "embed_tokens" not in n and "lora_" not in n)  # other tests may have injected an adapter
    assert flat_ttft_slots(smollm2, floor=1) == params // (8 * 64 * c.num_attention_heads * c.num_hidden_layers)
    assert (flat_ttft_slots(smollm2), flat_ttft_slots(qwen)) == (768, 2080)  # Qwen's untied lm_head not counted
    assert tome_tiny.memory_budget() == 512  # the floor: a tiny model would otherwise get almost nothing
    before = flat_ttft_slots(tome_tiny.lm, floor=1)
    tome_tiny.adapter_for()  # injects LoRA weights into the model: not part of an answer's cost
    assert any("lora_" in n for n, _ in tome_tiny.lm.model.named_parameters())
    assert flat_ttft_slots(tome_tiny.lm, floor=1) == before
    for fixed in (0, 16):
        tome_tiny.config = replace(tome_tiny.config, memory_budget=fixed)
        assert tome_tiny.memory_budget() == fixed
