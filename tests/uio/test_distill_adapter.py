"""The memory-only adapter (mode "memory"): ordinary tokens go through the frozen model, only <mem> tokens train."""
import pytest
import torch

from tests.conftest import _tiny
from uio.adapter import UIOAdapter, body
from uio.encoder import Encoder
from uio.memory import MemoryConfig

CFG = MemoryConfig(segment_len=16, num_mem=4, enc_rank=4, enc_alpha=8, head_rank=4, head_alpha=8)
SEGS = [list(range(100, 116)), list(range(300, 310))]


def plain_kv(lm, ids):
    """Pre-RoPE keys and values of every layer from the plain model (adapters disabled), (layers, B, n, kv*hd)."""
    ks, vs, hooks = [], [], []
    for layer in body(lm).layers:
        hooks.append(layer.self_attn.k_proj.register_forward_hook(lambda _m, _i, o: ks.append(o)))
        hooks.append(layer.self_attn.v_proj.register_forward_hook(lambda _m, _i, o: vs.append(o)))
    with torch.no_grad():
        lm.model(input_ids=ids)
    for h in hooks:
        h.remove()
    return torch.stack(ks), torch.stack(vs)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_ordinary_kv_are_the_frozen_models_with_and_without_the_adapter(tokenizer, kind):
    lm = _tiny(kind, tokenizer)
    ids = torch.tensor([SEGS[0]])
    k0, v0 = plain_kv(lm, ids)  # no adapter at all
    adapter = UIOAdapter(lm, CFG, mode="memory").randomize_(std=0.5)
    enc = Encoder(adapter)
    ordinary = enc.ordinary(ids)
    assert torch.equal(ordinary.keys.flatten(-2), k0) and torch.equal(ordinary.values.flatten(-2), v0)
    assert not ordinary.keys.requires_grad
    # ... and what the ordinary tokens' projections compute during a whole encoder forward is the same too
    seen = []
    hook = body(lm).layers[1].self_attn.v_proj.register_forward_hook(lambda _m, _i, o: seen.append(o.detach()))
    enc.forward(ids)
    hook.remove()
    assert torch.equal(seen[0], v0[1])  # the first call is the frozen pass; the second holds <mem> tokens only
    assert seen[1].shape[1] == CFG.num_mem
    # the full-mode encoder (LoRA on every token) changes them: the property is not vacuous
    full = UIOAdapter(lm, CFG, mode="full")
    full.load_state_dict(adapter.state_dict())
    seen.clear()
    hook = body(lm).layers[1].self_attn.v_proj.register_forward_hook(lambda _m, _i, o: seen.append(o.detach()))
    Encoder(full).forward(ids)
    hook.remove()
    assert not torch.allclose(seen[0][:, :16], v0[1], atol=1e-3)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_both_modes_agree_at_a_zero_encoder_lora_and_differ_after(tokenizer, kind):
    lm = _tiny(kind, tokenizer)
    full, mem = UIOAdapter(lm, CFG), UIOAdapter(lm, CFG, mode="memory")
    mem.load_state_dict(full.state_dict())
    with torch.no_grad():
        a, b = Encoder(full).forward(SEGS), Encoder(mem).forward(SEGS)
    assert a[2] == b[2] == [4, 4]
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    full.randomize_(std=0.2)
    mem.load_state_dict(full.state_dict())
    with torch.no_grad():
        a, b = Encoder(full).forward(SEGS), Encoder(mem).forward(SEGS)
    assert not torch.allclose(a[0], b[0], atol=1e-3)


def test_gradients_reach_only_memory_token_parameters(tokenizer):
    lm = _tiny("qwen2", tokenizer)
    emb = body(lm).embed_tokens.weight
    for mode in ("memory", "full"):
        adapter = UIOAdapter(lm, CFG, mode=mode).randomize_(std=0.2)
        for p in adapter.parameters():
            p.requires_grad_(True)
        emb.requires_grad_(True)  # the ordinary tokens' only trainable entry point, for this test
        emb.grad = None
        try:
            keys, values, _ = Encoder(adapter).forward(torch.tensor([SEGS[0]]))
            (keys.square().sum() + values.square().sum()).backward()
            if mode == "memory":
                assert emb.grad is None  # nothing flowed back through an ordinary token
                last = f"layers.{lm.model.config.num_hidden_layers - 1}."
                for n, p in adapter.named_parameters().items():
                    if last in n and "uio_encoder" in n:
                        continue  # the last layer's encoder LoRA acts after the memories are read
                    assert p.grad is not None and p.grad.abs().sum() > 0, n
            else:
                assert emb.grad is not None and emb.grad.abs().sum() > 0  # the old encoder trains through them
        finally:
            emb.requires_grad_(False)
            emb.grad = None


def test_the_mode_is_in_the_file_and_the_fingerprint(tokenizer, tmp_path):
    lm = _tiny("llama", tokenizer)
    mem = UIOAdapter(lm, CFG, mode="memory").randomize_(seed=2)
    full = UIOAdapter(lm, CFG)
    full.load_state_dict(mem.state_dict())
    assert mem.fingerprint != full.fingerprint  # memories of one mode are refused by the other
    mem.save(tmp_path / "a.safetensors")
    loaded = UIOAdapter.load(lm, tmp_path / "a.safetensors")
    assert loaded.mode == "memory" and loaded.fingerprint == mem.fingerprint
    with pytest.raises(ValueError):
        UIOAdapter(lm, CFG, mode="beacon")


def test_memory_mode_compresses_batched_as_one_by_one(tokenizer):
    lm = _tiny("llama", tokenizer)
    enc = Encoder(UIOAdapter(lm, CFG, mode="memory").randomize_(seed=4), batch_size=2)
    together = enc.compress(SEGS + [list(range(50, 53))])
    apart = [enc.compress([s]) for s in SEGS + [list(range(50, 53))]]
    assert together.slots == [4, 4, 3]
    assert torch.allclose(together.keys, torch.cat([m.keys for m in apart], 1), atol=1e-5)
    assert torch.allclose(together.values, torch.cat([m.values for m in apart], 1), atol=1e-5)


@pytest.mark.parametrize("base", ["kvzip", "strided"])
def test_an_untrained_adapter_with_a_base_makes_the_base_methods_memories(tokenizer, base):
    from uio.compress.kvzip import KVzipCompressor

    lm = _tiny("qwen2", tokenizer)
    cfg = MemoryConfig(segment_len=32, num_mem=4, enc_rank=4, enc_alpha=8, head_rank=4, head_alpha=8)
    adapter = UIOAdapter(lm, cfg, mode="memory", base=base)
    seg = list(range(200, 232))
    with torch.no_grad():
        keys, values, slots = Encoder(adapter).forward([seg])
    assert slots == [4]
    if base == "kvzip":
        ref_k, ref_v = KVzipCompressor(ratio=8).compress_one(lm, seg)[:2]
    else:
        ordinary = Encoder(adapter).ordinary([seg])
        at = [7, 15, 23, 31]  # the token before each slot's position c_i = 8, 16, 24, 32
        ref_k, ref_v = ordinary.keys[:, 0, at], ordinary.values[:, 0, at]
    assert torch.allclose(keys, ref_k, atol=1e-5) and torch.allclose(values, ref_v, atol=1e-5)
    # the correction trains: every group gets gradient once the head's LoRA B is non-zero
    adapter.randomize_(std=0.2)
    for p in adapter.parameters():
        p.requires_grad_(True)
    k, v, _ = Encoder(adapter).forward(torch.tensor([seg]))
    (k.square().sum() + v.square().sum()).backward()
    last = f"layers.{lm.model.config.num_hidden_layers - 1}."
    for n, p in adapter.named_parameters().items():
        if last in n and "uio_encoder" in n:
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    with pytest.raises(ValueError):
        UIOAdapter(lm, cfg, mode="full", base=base)
