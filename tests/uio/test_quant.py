"""int8 ingestion (uio/quant.py): memories close to the float ones, through the service too."""
import torch
from uio.adapter import UIOAdapter
from uio.encoder import Encoder
from uio.quant import int8_encoder
from tests.conftest import SEGMENTS, _tiny, cosines, make_pdf, uio_config


PAGES = [f"Page {i}. " + "The keeper lit the lantern at the north wall before the storm. " * 12 for i in range(1, 5)]


def _segments(t, doc):
    from ingest import split_segments, read_document

    pages = read_document(t.config.uploads_path / f"{doc.sha256}.pdf").pages
    return split_segments(pages, t.lm.tokenizer, t.config.segment_len)


def test_int8_memories_are_close_to_fp32(adapter, memory):
    q = int8_encoder(adapter, batch_size=2)
    mlp, mlp8 = adapter.lm.model.model.layers[0].mlp, q.lm.model.model.layers[0].mlp
    assert isinstance(mlp8.gate_proj, torch.ao.nn.quantized.dynamic.Linear)
    assert type(mlp8.down_proj) is torch.nn.Linear and mlp8.down_proj.weight is mlp.down_proj.weight  # kept, shared
    assert type(mlp.gate_proj) is torch.nn.Linear  # the original is untouched
    mem8 = q.compress(SEGMENTS, token_spans=memory.token_spans)
    assert mem8.fingerprint == memory.fingerprint and mem8.slots == memory.slots
    assert cosines(mem8.keys, memory.keys).min() > 0.95
    assert cosines(mem8.values, memory.values).min() > 0.95
    assert not torch.equal(mem8.keys, memory.keys)  # it really ran in int8


def test_int8_ingestion_through_the_service(tmp_path, db_url, tokenizer):
    from tests.conftest import make_tome

    t = make_tome(tmp_path, db_url, _tiny("llama", tokenizer), max_new_tokens=4, segment_len=64,
                  int8_ingest=True, compressor="uio")  # the int8 copy serves the UIO encoder
    try:
        r = t.ingest(make_pdf(tmp_path / "b.pdf", PAGES))
        assert r.ok, r.error
        mem8 = t.memory(r.document)
        fp32 = Encoder(t.adapter).compress([s.token_ids for s in _segments(t, r.document)])
        assert cosines(mem8.keys, fp32.keys).min() > 0.95
        assert list(t.ask([r.document.id], "Who?", mode="compressed"))[-1].done
    finally:
        t.store.close()


def test_int8_encoder_of_a_bf16_model_returns_bf16_memories_close_to_its_own(tokenizer):
    from dataclasses import replace

    lm = _tiny("qwen2", tokenizer)
    lm = replace(lm, model=lm.model.to(torch.bfloat16), dtype=torch.bfloat16)
    adapter = UIOAdapter(lm, uio_config()).randomize_(seed=4)
    ref = Encoder(adapter).compress(SEGMENTS)
    mem8 = int8_encoder(adapter).compress(SEGMENTS)
    assert mem8.keys.dtype == torch.bfloat16 and mem8.fingerprint == ref.fingerprint
    assert cosines(mem8.keys, ref.keys).min() > 0.95 and cosines(mem8.values, ref.values).min() > 0.95
    assert next(adapter.lm.model.parameters()).dtype == torch.bfloat16  # the original stays bf16
