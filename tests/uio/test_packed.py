"""Linear weights packed for oneDNN (uio/packed.py): the numbers of plain bf16 Linears (up to bf16 rounding where
oneDNN picks another kernel for a shape), everywhere the model is used, and a clear refusal where a packed layer
cannot follow."""
from dataclasses import replace

import pytest
import torch
from torch import nn
from transformers import DynamicCache

from tests.conftest import SEGMENTS, _tiny, make_pdf, uio_config
from uio.packed import PackedLinear, RowHead, pack_linears, packable, packed_numel, unpack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _bf16(kind: str, tokenizer):
    lm = _tiny(kind, tokenizer)  # seeded: every call makes the same weights
    return replace(lm, model=lm.model.to(torch.bfloat16), dtype=torch.bfloat16)


def _layers_linears(model) -> list[nn.Module]:
    return [m for m in model.model.layers.modules() if isinstance(m, nn.Linear)]


def _prefill_then_decode(model, ids: torch.Tensor, steps: int = 3) -> list[torch.Tensor]:
    """Logits of a prefill over ``ids`` and of ``steps`` greedy decoding steps after it."""
    out, cache = [], DynamicCache(config=model.config)
    with torch.inference_mode():
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
        out.append(logits)
        for _ in range(steps):
            logits = model(input_ids=logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True).logits
            out.append(logits)
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_packed_model_gives_the_same_logits(tokenizer, kind):
    plain, packed = _bf16(kind, tokenizer), _bf16(kind, tokenizer)
    weights = {n: p.clone() for n, p in packed.model.named_parameters() if "layers" in n and "proj.weight" in n}
    n = pack_linears(packed.model)
    assert n == 2 * 7 and all(type(m) is PackedLinear for m in _layers_linears(packed.model))
    assert type(packed.model.lm_head) is RowHead  # the head is not packed: one row goes through torch.mv
    assert packed_numel(packed.model) == sum(w.numel() for w in weights.values())
    assert torch.equal(packed.model.model.layers[1].mlp.down_proj.weight, weights["model.layers.1.mlp.down_proj.weight"])
    if kind == "qwen2":  # q/k/v carry a bias, kept as the same parameter
        assert packed.model.model.layers[0].self_attn.q_proj.bias is not None
    ids = torch.randint(100, 2000, (2, 37))  # a batch of two, an odd length
    for a, b in zip(_prefill_then_decode(plain.model, ids), _prefill_then_decode(packed.model, ids)):
        # bitwise equal on this project's CPUs at these shapes; another kernel (another CPU, another row count)
        # may round differently, as a change of thread count does
        torch.testing.assert_close(b, a, rtol=0.016, atol=0.01)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_one_row_head_gives_linears_logits_and_keeps_a_shared_weight(tokenizer, kind):
    lm = _bf16(kind, tokenizer)
    head, embed = lm.model.lm_head, lm.model.get_input_embeddings()
    shared = head.weight is embed.weight
    pack_linears(lm.model)
    assert lm.model.lm_head is head and type(head) is RowHead
    assert (head.weight is embed.weight) == shared  # the class changed, not the parameter
    torch.manual_seed(0)
    x = torch.randn(1, 1, head.in_features, dtype=torch.bfloat16)
    one = head(x)
    assert one.shape == (1, 1, head.out_features)
    assert torch.equal(one, nn.functional.linear(x, head.weight, head.bias))  # bitwise: the same fp32 sums
    rows = torch.randn(2, 3, head.in_features, dtype=torch.bfloat16)  # more rows: F.linear's own path
    assert torch.equal(head(rows), nn.functional.linear(rows, head.weight, head.bias))
    # the model's last-position logits for a batch of one (what generation reads) are the plain model's
    plain = _bf16(kind, tokenizer)
    ids = torch.randint(100, 2000, (1, 21))
    with torch.inference_mode():
        a = plain.model(input_ids=ids, logits_to_keep=1).logits
        b = lm.model(input_ids=ids, logits_to_keep=1).logits
    torch.testing.assert_close(b, a, rtol=0.016, atol=0.01)
    assert int(b[0, -1].argmax()) == int(a[0, -1].argmax())
    unpack_linears(lm.model)
    assert type(lm.model.lm_head) is nn.Linear


def test_only_bf16_cpu_models_are_packed(tiny_llama):
    assert not packable(tiny_llama.model)  # float32: oneDNN's kernels round differently there and are no faster
    assert pack_linears(tiny_llama.model) == 0
    assert all(type(m) is nn.Linear for m in _layers_linears(tiny_llama.model))
    assert type(tiny_llama.model.lm_head) is nn.Linear


def test_unpack_restores_plain_layers_and_moving_a_packed_one_is_refused(tokenizer):
    lm = _bf16("llama", tokenizer)
    before = {n: p.clone() for n, p in lm.model.named_parameters()}
    pack_linears(lm.model)
    with pytest.raises(TypeError, match="unpack_linears"):
        lm.model.float()
    assert unpack_linears(lm.model) == 14
    after = dict(lm.model.named_parameters())
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert lm.model.float().model.layers[0].mlp.up_proj.weight.dtype == torch.float32  # movable again


def test_uio_adapter_on_a_packed_model_makes_the_same_memories(tokenizer):
    from uio.adapter import UIOAdapter
    from uio.encoder import Encoder

    ref = UIOAdapter(_bf16("qwen2", tokenizer), uio_config()).randomize_(seed=4)
    lm = _bf16("qwen2", tokenizer)
    pack_linears(lm.model)  # as the service does at load, before any adapter is injected
    adapter = UIOAdapter(lm, uio_config()).randomize_(seed=4)
    assert adapter.fingerprint == ref.fingerprint  # the fingerprint's weight sample reads the packed weight
    a, b = Encoder(ref).compress(SEGMENTS), Encoder(adapter).compress(SEGMENTS)
    torch.testing.assert_close(b.keys, a.keys, rtol=0.016, atol=0.01)
    torch.testing.assert_close(b.values, a.values, rtol=0.016, atol=0.01)


def test_int8_copy_of_a_packed_model_is_made_from_plain_layers(tokenizer):
    from uio.adapter import UIOAdapter
    from uio.quant import int8_encoder

    lm = _bf16("qwen2", tokenizer)
    pack_linears(lm.model)
    adapter = UIOAdapter(lm, uio_config()).randomize_(seed=4)
    q = int8_encoder(adapter)  # deep-copies the model: a packed layer copies as a plain one
    assert isinstance(q.lm.model.model.layers[0].mlp.gate_proj, torch.ao.nn.quantized.dynamic.Linear)
    assert type(lm.model.model.layers[0].mlp.gate_proj) is PackedLinear  # the original stays packed
    assert q.compress(SEGMENTS).keys.dtype == torch.bfloat16


def test_the_service_packs_a_bf16_model_it_loads_unless_told_not_to(tmp_path, tokenizer):
    from tome import Config, Tome

    folder = tmp_path / "tiny-bf16"
    _bf16("qwen2", tokenizer).model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    pages = ["The lighthouse keeper of Tarn Island is called Edda Morrow. " * 6, "Ships pass at dawn. " * 20]
    for packed in (True, False):
        cfg = Config(data_dir=tmp_path / f"data-{packed}", model=str(folder), device="cpu", dtype="bfloat16",
                     max_new_tokens=6, segment_len=64, pack_weights=packed, compressor="kvzip")
        t = Tome(cfg)
        try:
            doc = t.ingest(make_pdf(tmp_path / "book.pdf", pages)).document
            kinds = {type(m) for m in _layers_linears(t.lm.model)}
            assert kinds == ({PackedLinear} if packed else {nn.Linear})
            final = list(t.ask([doc.id], "Who keeps the lighthouse?", mode="compressed"))[-1]
            assert final.done and final.stats["memory_slots"] > 0 and final.text
        finally:
            t.store.close()


def test_shortlisted_head_keeps_the_exact_argmax_and_the_exact_best_logits(tokenizer):
    import copy
    import pickle

    from uio.packed import SHORTLIST, shortlist_head

    lm = _bf16("qwen2", tokenizer)
    plain = _bf16("qwen2", tokenizer)
    pack_linears(lm.model)
    head = lm.model.lm_head
    assert shortlist_head(lm.model) and head._int8 is not None
    torch.manual_seed(1)
    for _ in range(20):
        x = torch.randn(1, 1, head.in_features, dtype=torch.bfloat16) * 4
        exact = torch.mv(head.weight, x.reshape(-1))
        got = head(x)[0, 0]
        best = exact.float().topk(SHORTLIST // 4).indices  # the exact best logits come back bitwise
        assert torch.equal(got[best], exact[best]) and int(got.argmax()) == int(exact.argmax())
        assert float((got.float() - exact.float()).abs().max()) < 0.5  # the rest: the int8 copy's
        assert not torch.equal(got, exact)  # (it is used: some logit outside the shortlist differs)
    zero = torch.zeros(1, 1, head.in_features, dtype=torch.bfloat16)  # all logits tie: no margin, exact product
    assert torch.equal(head(zero)[0, 0], torch.mv(head.weight, zero.reshape(-1)))
    # greedy tokens through the model are the plain model's
    ids = torch.randint(100, 2000, (1, 19))
    with torch.inference_mode():
        a = plain.model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        b = lm.model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)
    # copies and pickles leave the int8 copy behind (a Ray worker, the int8 encoder's float copy)
    assert copy.deepcopy(head)._int8 is None and pickle.loads(pickle.dumps(head))._int8 is None
    assert head._int8 is not None
    unpack_linears(lm.model)
    assert type(head) is nn.Linear and "_int8" not in vars(head)  # unpacked: the copy's memory goes too
    assert not shortlist_head(lm.model)  # a plain head: nothing to shortlist
    pack_linears(lm.model)
    assert shortlist_head(lm.model)
    head.float()
    assert head._int8 is None and head(x.float()).dtype == torch.float32  # converted: the copy no longer follows


class _Headed(nn.Module):
    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head

    def get_output_embeddings(self) -> nn.Linear:
        return self.head


def test_int8_logits_stay_inside_their_bounds_and_near_ties_beyond_the_shortlist_are_read_exactly():
    from uio.packed import SHORTLIST, _bound_terms, shortlist_head

    torch.manual_seed(3)
    w = torch.randn(4096, 64)
    w[:300] = w[0] + torch.randn(300, 64) * 1e-2  # near copies the int8 copy cannot rank (below its step)
    head = nn.Linear(64, 4096, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        head.weight.copy_(w)
    head.__class__ = RowHead
    assert shortlist_head(_Headed(head))
    packed, residual, norm = head._int8
    with torch.inference_mode():
        for scale in (0.1, 3.0, 40.0):
            x = (torch.randn(64) * scale).to(torch.bfloat16)
            exact = torch.mv(head.weight, x).float()
            approx = torch.ops.quantized.linear_dynamic(x.float()[None], packed, True)[0]
            a, b = _bound_terms(x.float())
            assert bool(((approx - exact).abs() <= residual * a + norm * b).all())
        x = (w[0] * 2).to(torch.bfloat16)  # the near copies hold the best logits, 300 > SHORTLIST of them
        exact = torch.mv(head.weight, x)
        got = head(x[None, None])[0, 0]
    assert 300 > SHORTLIST and int(got.argmax()) == int(exact.argmax())
    assert torch.equal(got[:300], exact[:300])  # the shortlist and every rival its bound let reach the best
    assert not torch.equal(got, exact)  # the rest from the int8 copy: the whole product was not read
