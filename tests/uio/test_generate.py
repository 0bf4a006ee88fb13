"""Generation: logits only for the last prompt position, prefill timing over chunks."""
import time
import pytest
import torch
from uio.decoder import build_cache
from uio.encoder import Encoder
from uio.generate import stream
from tests.conftest import SEGMENTS


def test_prefill_computes_logits_for_the_last_position_only(adapter, tokenizer):
    lm = adapter.lm
    ids = torch.randint(5, 1000, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = lm.model(ids).logits
        last = lm.model(ids, logits_to_keep=1).logits
    assert last.shape[1] == 1 and torch.allclose(last, full[:, -1:], atol=1e-5)
    # the answer path's prefill asks for exactly that
    seen = []

    def grab(_m, args, kwargs, out):
        seen.append((kwargs.get("logits_to_keep"), out.logits.shape[1]))

    cache, m = build_cache(lm, [Encoder(adapter).compress(SEGMENTS[:1])])
    h = lm.model.register_forward_hook(grab, with_kwargs=True)
    try:
        gen = stream(lm, [{"role": "user", "content": "Where is the lantern?"}], past_key_values=cache,
                     prefix_len=m, max_new_tokens=3)
        "".join(gen)
    finally:
        h.remove()
    assert seen[0] == (1, 1) and gen.stats.prompt_tokens > 1
    assert gen.stats.prefill_s > 0 and gen.stats.first_token_at > 0


def test_prefill_time_spans_every_chunk_of_a_chunked_prompt(adapter):
    # Under a cache policy the prompt is read in chunks; all of them are the prefill, not the first decode.
    from uio.cache import resolve_policy

    lm = adapter.lm
    spans: list[list[float]] = []
    pre = lm.model.register_forward_pre_hook(lambda *a: spans.append([time.perf_counter()]))
    post = lm.model.register_forward_hook(lambda *a: spans[-1].append(time.perf_counter()))
    try:
        gen = stream(lm, [{"role": "user", "content": "Where is the lantern? " * 6}],
                     resolve_policy("streaming", 0.5), max_new_tokens=3, chunk=8)
        "".join(gen)
    finally:
        pre.remove()
        post.remove()
    chunks = -(-gen.stats.prompt_tokens // 8)
    assert chunks >= 3 and len(spans) >= chunks
    assert gen.stats.prefill_s == pytest.approx(spans[chunks - 1][1] - spans[0][0], abs=2e-3)
    assert gen.stats.prefill_s > spans[0][1] - spans[0][0]  # more than the first chunk alone


@pytest.mark.parametrize("policy", ["full", "streaming"])  # HF generate, and our own decode loop
def test_each_handed_out_token_carries_its_log_probability(adapter, policy):
    from uio.cache import resolve_policy

    lm = adapter.lm
    messages = [{"role": "user", "content": "Where is the lantern?"}]
    gen = stream(lm, messages, resolve_policy(policy, 0.0), max_new_tokens=5)
    "".join(gen)
    ids = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
    expect = []
    with torch.inference_mode():  # greedy by hand, the whole sequence each step
        for _ in range(gen.stats.new_tokens):
            logp = torch.log_softmax(lm.model(ids).logits[0, -1].float(), -1)
            token = int(logp.argmax())
            expect.append(float(logp[token]))
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
    assert gen.stats.new_tokens == 5 and gen.stats.token_logprobs == pytest.approx(expect, abs=1e-3)
    assert gen.stats.confidence == pytest.approx(float(torch.tensor(expect).mean().exp()), rel=1e-3)
    assert gen.stats.as_dict()["confidence"] == pytest.approx(gen.stats.confidence, rel=1e-3)
