"""KVzip: scores equal an explicit computation over the whole [segment | repeat request] sequence."""
import re

import pytest
import torch

from uio.compress import make_compressor, storage_dtype
from tests.conftest import planted_code_document
from uio.compress.kvzip import chat_suffix, repeat_requests


def tokens(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 5000, (n,), generator=g).tolist()


def eager_attentions(lm, ids: list[int]) -> list[torch.Tensor]:
    """Per layer (H, T, T) attention weights of one plain forward, through transformers' eager attention."""
    previous = lm.model.config._attn_implementation
    lm.model.config._attn_implementation = "eager"  # its own causal mask: no custom (bool) mask involved
    try:
        with torch.inference_mode():
            out = lm.model(torch.tensor([ids]), output_attentions=True)
    finally:
        lm.model.config._attn_implementation = previous
    return [a[0].float() for a in out.attentions]


def direct_scores(lm, seg: list[int], chunk_size: int, n_sink: int = 4) -> torch.Tensor:
    """(layers, kv, n) the slow way: for each chunk, a full forward over [segment | request]; the weights of
    the request's rows, renormalised over [sinks | chunk | request] (kvpress's subset), max over group and rows."""
    cfg = lm.model.config
    kv, g = cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads
    n = len(seg)
    out = torch.zeros(cfg.num_hidden_layers, kv, n)
    for start, end, request in repeat_requests(lm.tokenizer, seg, chunk_size):
        t = n + len(request)
        sink = min(n_sink, start)
        cols = torch.cat([torch.arange(sink), torch.arange(start, end), torch.arange(n, t)])
        for layer, att in enumerate(eager_attentions(lm, seg + request)):
            rows = att[:, n:]  # (H, q, T): the request's queries
            sub = rows[..., cols]
            sub = sub / sub.sum(-1, keepdim=True)
            chunk = sub[..., sink:sink + end - start]  # (H, q, width)
            out[layer, :, start:end] = chunk.amax(1).view(kv, g, -1).amax(1)
    return out


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen"])
def test_scores_equal_direct_attention(request, model):
    lm = request.getfixturevalue(model)  # 4 query heads over 2 KV heads: GQA groups of 2
    seg = tokens(40, 1)
    comp = make_compressor("kvzip", 8, query_block=7)  # several query blocks, the last one short
    scores = comp.score(lm, comp.prefill(lm, seg))
    assert scores.shape == (2, 2, 40)
    torch.testing.assert_close(scores, direct_scores(lm, seg, 2048), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen"])
def test_chunked_reconstruction_scores_equal_direct_attention(request, model):
    lm = request.getfixturevalue(model)
    seg = tokens(40, 2)
    comp = make_compressor("kvzip", 8, chunk_size=16, query_block=64)  # chunks [0,16) [16,32) [32,40)
    assert [(s, e) for s, e, _ in repeat_requests(lm.tokenizer, seg, 16)] == [(0, 16), (16, 32), (32, 40)]
    pre = comp.prefill(lm, seg)
    scores = comp.score(lm, pre)
    torch.testing.assert_close(scores, direct_scores(lm, seg, 16), atol=1e-6, rtol=1e-5)
    assert pre.cache.get_seq_length() == 40  # each request's KV was dropped again


def test_request_is_prompt_chat_suffix_and_the_segment(tokenizer):
    seg = tokens(30, 3)
    (start, end, req), = repeat_requests(tokenizer, seg, 2048)
    assert (start, end) == (0, 30) and req[-30:] == seg
    text = tokenizer.decode(req[:-30])
    assert text == "\n\nRepeat the previous context exactly.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(chat_suffix(tokenizer)) == "<|im_end|>\n<|im_start|>assistant\n"
    later = repeat_requests(tokenizer, seg, 20)[1][2]
    assert later[-10:] == seg[20:] and later[-10 - len(chat_suffix(tokenizer)) - 8:][:8] == seg[12:20]


def test_kept_slots_are_the_top_scores_per_head_in_document_order(tiny_qwen):
    seg = tokens(96, 4)
    comp = make_compressor("kvzip", 3, store="model")  # 32 slots: 4 sinks (at most 1/8 of the budget)
    pre = comp.prefill(tiny_qwen, seg)
    scores = comp.score(tiny_qwen, pre)
    mem = comp.compress(tiny_qwen, [seg])
    assert mem.slots == [32]
    for layer in range(2):
        for head in range(2):
            s = scores[layer, head].clone()
            s[:4] = float("inf")
            want = sorted(s.topk(32).indices.tolist())
            assert torch.equal(mem.keys[layer, :, head], pre.keys[layer, want, head])
            assert torch.equal(mem.values[layer, :, head], pre.values[layer, want, head])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kvzip", "kvzip-fast"])  # kvzip-fast: passes since its version-2 scorer
def test_smollm2_answers_a_planted_code_from_8x_memories(smollm2, name):
    """A 5-digit code in ~2K tokens of filler (two 1,024-token segments) comes back from 256 memory slots."""
    from uio.decoder import stream_over_memories

    torch.set_num_threads(1)
    doc, _ = planted_code_document(smollm2.tokenizer)  # the code in the second segment
    comp = make_compressor(name, 8)
    mem = comp.compress(smollm2, [doc[:1024], doc[1024:]], segment_ids=[0, 1],
                        token_spans=[(0, 1024), (1024, 2048)])
    assert mem.slots == [128, 128] and mem.keys.dtype == storage_dtype(smollm2) and mem.keys.shape[0] == 30
    gen = stream_over_memories(smollm2, [mem], [{"role": "user", "content":
                                                 "What is the pass key? Answer with the number only."}],
                               max_new_tokens=12, fingerprint=mem.fingerprint)
    text = "".join(gen)
    assert gen.stats.prefix_len == 256
    assert "71432" in re.sub(r"\D", "", text), text
