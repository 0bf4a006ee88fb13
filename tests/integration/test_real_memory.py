"""The memory model on the real default model: compress a 4-segment book, answer from memories.

The adapter here is untrained (LoRA B = 0, <mem> = EOS embedding), so only the
mechanics are checked: shapes, bytes, a clean generation. Quality is measured
by bench/ once adapters are trained.
"""
import pytest
import torch

from tests.integration.test_real_models import FACT, FILLER


@pytest.mark.slow
def test_qwen_compresses_four_segments_and_answers_from_memories(qwen):
    from ingest import Page, split_segments
    from uio.adapter import UIOAdapter
    from uio.decoder import stream_over_memories
    from uio.encoder import Encoder
    from uio.memory import MemoryConfig

    pages = [Page(i + 1, (FILLER * 6 + (FACT if i == 5 else "")).strip()) for i in range(24)]
    segments = split_segments(pages, qwen.tokenizer, 1024)[:4]
    assert len(segments) == 4
    ids = [qwen.tokenizer(s.text, add_special_tokens=False)["input_ids"][:1024] for s in segments]
    adapter = UIOAdapter(qwen, MemoryConfig())
    done = []
    mem = Encoder(adapter, batch_size=2).compress(ids, progress=lambda i, n: done.append((i, n)))
    cfg = qwen.model.config
    assert done == [(2, 4), (4, 4)]
    assert mem.keys.shape == (cfg.num_hidden_layers, sum(mem.slots), cfg.num_key_value_heads, 64)
    assert mem.slots == [128] * 4 and mem.keys.dtype == qwen.dtype
    raw_bytes = sum(len(i) for i in ids) * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * 64 * qwen.dtype.itemsize
    assert mem.nbytes * 8 == pytest.approx(raw_bytes, rel=0.02)
    assert torch.isfinite(mem.keys).all() and torch.isfinite(mem.values).all()
    gen = stream_over_memories(qwen, [mem], [{"role": "user", "content": "What is the text about?"}],
                               max_new_tokens=12, fingerprint=adapter.fingerprint)
    text = "".join(gen)
    assert gen.stats.prefix_len == 512 and gen.stats.new_tokens >= 1 and text.strip()
