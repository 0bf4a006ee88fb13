"""Drafted decoding (uio/draft.py, uio/generate.py): the prompt lookup, taking drafted tokens back out of a
PolicyCache, and the same greedy answers in fewer forwards under every policy that drafts."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import pytest
import torch

from tests.conftest import _tiny
from uio.cache import H2O, AttentionGate, CachePolicy, ChunkedFullCache, FullCache, PolicyCache, StreamingLLM
from uio.draft import MAX_DRAFT, PromptLookup
from uio.gate import AttentionGates, GateConfig
from uio.generate import stream


def test_lookup_drafts_what_followed_the_latest_longest_match():
    assert PromptLookup([1, 2, 3, 4, 5, 1, 2, 3]).draft(4) == [4, 5, 1, 2]
    # [9, 2, 3] never came before; [2, 3] did, last followed by 7
    assert PromptLookup([1, 2, 3, 8, 2, 3, 7, 9, 2, 3]).draft(3) == [7, 9, 2]
    assert PromptLookup([4, 1, 2, 5, 6, 2]).draft(2) == [5, 6]  # only the last token matches
    assert PromptLookup([5, 6]).draft(3) == [] and PromptLookup([5, 6, 5]).draft(0) == []
    built = PromptLookup([1, 2])
    for t in [3, 1, 2, 3, 9, 1, 2]:
        built.append(t)
    whole = PromptLookup([1, 2, 3, 1, 2, 3, 9, 1, 2])
    assert built.tokens == whole.tokens and built.draft(5) == whole.draft(5) == [3, 9, 1, 2]
    with pytest.raises(ValueError):
        PromptLookup([1], ngram=0)


def _ids(lm, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.model.config.vocab_size, (1, n), generator=g)


@dataclass
class Uneven(CachePolicy):
    """Each KV head keeps another share of the older entries, so layers hold pads and per-layer masks."""

    name: ClassVar[str] = "uneven"

    def keep(self, layer, view):
        h = torch.arange(view.positions.shape[0])[:, None]
        return view.valid & (((view.positions + h) % 3 != 0) | (view.positions >= view.first_pos + view.seen - 4))


def _gate(lm) -> AttentionGate:
    torch.manual_seed(0)
    return AttentionGate(weights=AttentionGates(GateConfig.for_model(lm.model, base_model="tiny", window=8)),
                         target_eviction=0.5)


@pytest.mark.parametrize("make", [lambda lm: FullCache(), lambda lm: StreamingLLM(target_eviction=0.5),
                                  lambda lm: Uneven(), _gate], ids=["full", "streaming", "uneven", "gate"])
def test_taking_tokens_back_leaves_the_cache_a_forward_without_them_would(tiny_llama, make):
    ids = _ids(tiny_llama, 46)
    caches = []
    for read in (ids[:, 40:46], ids[:, 40:43]):
        pc = PolicyCache(tiny_llama.model, make(tiny_llama))
        with torch.no_grad():
            pc.forward(ids[:, :40])
            pc.evict()
            pc.forward(read)
            if read.shape[1] == 6:
                pc.truncate(3)
        caches.append(pc)
    drafted, plain = caches
    assert (drafted.seen, drafted.next_pos) == (plain.seen, plain.next_pos) == (43, 43)
    for layer in range(tiny_llama.model.config.num_hidden_layers):
        assert torch.equal(drafted.positions[layer], plain.positions[layer])
        for a, b in ((drafted.cache.layers[layer].keys, plain.cache.layers[layer].keys),
                     (drafted.cache.layers[layer].values, plain.cache.layers[layer].values)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b)
    with torch.no_grad():  # the next token reads the same cache, masks and (for the gate) pending inputs
        nxt = [pc.forward(ids[:, 45:46]).logits for pc in caches]
        for pc in caches:
            pc.evict()
    torch.testing.assert_close(nxt[0], nxt[1])
    for layer in range(tiny_llama.model.config.num_hidden_layers):
        assert torch.equal(drafted.positions[layer], plain.positions[layer])


def test_a_policy_that_cannot_forget_refuses_to_take_tokens_back(tiny_llama):
    pc = PolicyCache(tiny_llama.model, H2O(target_eviction=0.5))
    with torch.no_grad():
        pc.forward(_ids(tiny_llama, 8))
    with pytest.raises(TypeError, match="h2o"):
        pc.truncate(2)


@pytest.fixture(scope="module")
def successor(tokenizer):
    """A tiny Llama in float64 whose greedy next token is a fixed permutation of the current one: the input
    embedding dominates its residual stream and the output head maps token c's embedding to ``perm[c]``. So a
    prompt can hold stretches of that chain (drafts the model keeps) and stretches off it (drafts it rejects),
    and a forward over several tokens picks exactly what one over each does."""
    lm = _tiny("llama", tokenizer)
    model = lm.model.double()
    g = torch.Generator().manual_seed(3)
    vocab, width = model.model.embed_tokens.weight.shape
    perm = torch.randperm(vocab, generator=g)
    embed = torch.randn(vocab, width, generator=g, dtype=torch.float64)
    head = torch.empty_like(embed)
    head[perm] = embed  # logits[perm[c]] = embed[c] . h: largest for the current token c
    model.model.embed_tokens.weight.data = embed
    model.lm_head.weight.data = head
    return replace(lm, model=model, dtype=torch.float64), perm.tolist()


def _chain(perm, start: int, n: int) -> list[int]:
    out = [start]
    while len(out) < n:
        out.append(perm[out[-1]])
    return out


def _forwards(lm, run) -> tuple[list[int], object, str]:
    """Tokens read per forward while ``run()`` generates, the generation and its text."""
    sizes: list[int] = []
    h = lm.model.register_forward_pre_hook(lambda _m, _a, kw: sizes.append(kw["input_ids"].shape[1]),
                                           with_kwargs=True)
    try:
        gen = run()
        text = "".join(gen)
    finally:
        h.remove()
    return sizes, gen, text


def _gate64(lm) -> AttentionGate:
    policy = _gate(lm)
    policy.weights.double()
    return policy


@pytest.mark.parametrize("make", [lambda lm: FullCache(), lambda lm: ChunkedFullCache(),
                                  lambda lm: StreamingLLM(target_eviction=0.5), _gate64],
                         ids=["full", "chunked", "streaming", "gate"])
def test_drafted_decoding_gives_the_greedy_answer_in_fewer_forwards(successor, make):
    lm, perm = successor
    a = 1000
    chain = _chain(perm, a, 30)
    off = _ids(lm, 6, seed=5)[0].tolist()  # a stretch off the chain: drafted after chain[8], then rejected
    prompt = chain[:9] + off + chain[14:23] + off[::-1] + [a]

    def run(drafts):
        return lambda: stream(lm, [], make(lm), max_new_tokens=24, evict_every=8, prompt_ids=prompt,
                              draft_tokens=drafts)

    plain_sizes, plain, plain_text = _forwards(lm, run(0))
    sizes, drafted, text = _forwards(lm, run(8))
    # the model follows its chain from the prompt's last token
    assert plain_text == text and plain_text == lm.tokenizer.decode(chain[1:25], skip_special_tokens=True)
    assert drafted.stats.new_tokens == plain.stats.new_tokens == 24
    assert 0 < drafted.stats.accepted < drafted.stats.drafted  # some drafts kept, some rejected
    assert len(sizes) - 1 == 24 - 1 - drafted.stats.accepted < len(plain_sizes) - 1  # decoding forwards
    assert max(sizes[1:]) <= 1 + 8 and set(plain_sizes[1:]) == {1}
    torch.testing.assert_close(torch.tensor(drafted.stats.token_logprobs), torch.tensor(plain.stats.token_logprobs))
    assert drafted.stats.eviction_rate == pytest.approx(plain.stats.eviction_rate)
    assert drafted.stats.kv_bytes_held == plain.stats.kv_bytes_held


def test_no_drafts_for_sampling_or_a_policy_that_cannot_forget(successor):
    lm, perm = successor
    prompt = _chain(perm, 7, 12) + [7]
    for policy, temperature in ((H2O(target_eviction=0.5), 0.0), (FullCache(), 0.7)):
        gen = stream(lm, [], policy, max_new_tokens=10, temperature=temperature, prompt_ids=prompt, draft_tokens=8)
        "".join(gen)
        assert gen.stats.drafted == 0 and gen.stats.new_tokens == 10
    sizes, gen, _ = _forwards(lm, lambda: stream(lm, [], FullCache(), max_new_tokens=10, prompt_ids=prompt,
                                                 draft_tokens=8))
    # the control: after the prefill's token one forward reads it and 8 drafts, all kept, and gives the tenth
    assert gen.stats.accepted == 8 and sizes == [len(prompt), 9]
    with pytest.raises(ValueError, match="draft_tokens"):
        stream(lm, [], FullCache(), prompt_ids=prompt, draft_tokens=MAX_DRAFT + 1)
