"""kvzip-fast: the learned scorer's mechanics on tiny random models, and with the shipped SmolLM2 weights
its agreement with KVzip's keep decisions on a held-out document and what it keeps of a planted code (the
answer from its 8x memories is tests/uio/compress/test_kvzip.py's). Cross-token features:
tests/uio/compress/test_scorer_cross.py."""
import math

import pytest
import torch

from uio.compress import COMPRESSORS, make_compressor, storage_dtype
from uio.compress.kvzip_fast import KVzipFastCompressor
from uio.compress.scorer import KVScorer, ScorerConfig, repeat_counts, scorer_path, topk_agreement
from tests.conftest import planted_code_document
from uio.gate import attention_inputs


def tokens(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 5000, (n,), generator=g).tolist()


def random_scorer(lm, path, seed: int = 0) -> KVScorer:
    torch.manual_seed(seed)
    scorer = KVScorer(ScorerConfig.for_model(lm, rank=8, repeats=True))
    for mod in scorer.layers:  # a visible spread of scores, so the top-k is not decided by noise
        torch.nn.init.normal_(mod.inp.weight, std=0.5)
    scorer.save(path)
    return KVScorer.load(path, lm)


@pytest.fixture
def llama_weights(tiny_llama, tmp_path):
    path = tmp_path / "scorer-tiny.safetensors"
    random_scorer(tiny_llama, path)
    return path


def test_registered_by_name():
    assert COMPRESSORS["kvzip-fast"] is KVzipFastCompressor
    assert isinstance(make_compressor("kvzip-fast", 8), KVzipFastCompressor)


def test_slot_counts_and_shapes(tiny_llama, llama_weights):
    comp = make_compressor("kvzip-fast", 8, weights=str(llama_weights))
    mem = comp.compress(tiny_llama, [tokens(96, 1), tokens(40, 2), tokens(5, 3)])
    assert mem.slots == [12, 5, 1]
    assert mem.keys.shape == (2, 18, 2, 16) and mem.values.shape == mem.keys.shape
    assert mem.keys.dtype == storage_dtype(tiny_llama) and mem.ratio == 8
    assert make_compressor("kvzip-fast", 32, weights=str(llama_weights)).compress(
        tiny_llama, [tokens(96, 1)]).slots == [3]


def test_keeps_the_scorers_top_k_from_the_one_prefill(tiny_llama, llama_weights):
    """The kept slots are the top scores of the scorer applied to each layer's attention input (sinks forced)."""
    seg = tokens(96, 4)
    comp = make_compressor("kvzip-fast", 8, weights=str(llama_weights), store="model")
    scorer = KVScorer.load(llama_weights, tiny_llama)
    with attention_inputs(tiny_llama.model) as seen, torch.inference_mode():
        tiny_llama.model(torch.tensor([seg]))
    want_scores = torch.stack([scorer(layer, seen[layer], torch.tensor(seg)) for layer in range(2)])
    pre = comp.prefill(tiny_llama, seg)
    torch.testing.assert_close(comp.score(tiny_llama, pre), want_scores)
    mem = comp.compress(tiny_llama, [seg])
    index = comp.select(want_scores, 12)  # the base class's selection (sinks, top-k, document order)
    assert not torch.equal(index, comp.select(torch.zeros_like(want_scores), 12))  # the scores decided
    for layer in range(2):
        for head in range(2):
            keep = index[layer, head].tolist()
            assert torch.equal(mem.keys[layer, :, head], pre.keys[layer, keep, head])
            assert torch.equal(mem.values[layer, :, head], pre.values[layer, keep, head])


def test_deterministic_and_identity_follows_the_weights(tiny_llama, llama_weights, tmp_path):
    seg = [tokens(96, 5), tokens(64, 6)]
    comp = make_compressor("kvzip-fast", 8, weights=str(llama_weights))
    a, b = comp.compress(tiny_llama, seg), comp.compress(tiny_llama, seg)
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert a.fingerprint == b.fingerprint
    other = tmp_path / "other.safetensors"
    random_scorer(tiny_llama, other, seed=1)
    assert make_compressor("kvzip-fast", 8, weights=str(other)).identity(tiny_llama) != a.fingerprint
    assert make_compressor("kvzip", 8).identity(tiny_llama) != a.fingerprint


def test_the_weights_are_hashed_once_per_loaded_scorer(tiny_llama, llama_weights, monkeypatch):
    calls = []
    real = KVScorer.digest
    monkeypatch.setattr(KVScorer, "digest", lambda self: calls.append(1) or real(self))
    comp = make_compressor("kvzip-fast", 8, weights=str(llama_weights))
    first = comp.identity(tiny_llama)
    assert comp.identity(tiny_llama) == make_compressor("kvzip-fast", 8, weights=str(llama_weights)).identity(
        tiny_llama) == first
    assert len(calls) <= 1  # every question reads the identity: the digest is kept with the loaded scorer


def test_save_load_round_trip(tiny_llama, tmp_path):
    torch.manual_seed(3)
    scorer = KVScorer(ScorerConfig.for_model(tiny_llama, rank=8, repeats=True))
    path = scorer.save(tmp_path / "s.safetensors", extra={"trained": {"steps": 1}})
    loaded = KVScorer.load(path, tiny_llama)
    assert loaded.config == scorer.config and loaded.config.base_model == "tiny-llama"
    for (k, v), (k2, v2) in zip(scorer.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        want = v if k.endswith(("mean", "inv_std")) else v.to(torch.float16).float()  # weights ship in fp16
        assert torch.equal(v2, want), k
    h, ids = torch.randn(1, 30, 64), torch.tensor(tokens(30))
    torch.testing.assert_close(loaded(1, h, ids), scorer(1, h, ids), atol=2e-2, rtol=2e-2)
    assert loaded.digest() == KVScorer.load(path).digest()


def test_refuses_weights_of_another_model(tiny_llama, tiny_qwen, llama_weights):
    with pytest.raises(ValueError, match="trained for base model 'tiny-llama'"):
        KVScorer.load(llama_weights, tiny_qwen)
    with pytest.raises(ValueError, match="trained for base model"):
        make_compressor("kvzip-fast", 8, weights=str(llama_weights)).compress(tiny_qwen, [tokens(40)])


def test_refuses_a_model_without_a_scorer_and_missing_files(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="no kvzip-fast scorer ships for model 'tiny-llama'"):
        make_compressor("kvzip-fast", 8).compress(tiny_llama, [tokens(40)])
    with pytest.raises(FileNotFoundError, match="python -m uio.train.scorer"):
        make_compressor("kvzip-fast", 8, weights=str(tmp_path / "none.safetensors")).compress(tiny_llama,
                                                                                             [tokens(40)])


def test_repeat_counts_see_the_whole_segment():
    ids = torch.tensor([5, 6, 5, 6, 7, 5])
    got = repeat_counts(ids) * math.log(1024)
    torch.testing.assert_close(got[:, 0].exp(), torch.tensor([3.0, 2, 3, 2, 1, 3]))  # token 5 three times
    torch.testing.assert_close(got[:, 1].exp(), torch.tensor([1.0, 2, 1, 2, 1, 1]))  # (5, 6) twice


def test_topk_agreement_counts_the_shared_kept_set():
    target = torch.arange(40.0).expand(1, 1, 40)  # keeps 4 sinks + the top 6: tokens 34..39 at ratio 4
    assert topk_agreement(target, target, 4) == 1.0
    assert topk_agreement(-target, target, 4) == 0.0  # keeps 4..9 instead
    half = target.clone()
    half[..., 34:37] = -1
    assert topk_agreement(half, target, 4) == 0.5


def test_shipped_weights_fit_their_size_limit():
    for key in ("smollm2", "qwen"):
        path = scorer_path(key)
        assert path.is_file(), path
        assert path.stat().st_size <= 8 * 2 ** 20
        assert KVScorer.load(path).config.base_model == key


# -- the real model -----------------------------------------------------------------------------------
def heldout_document(tokenizer, n: int) -> list[int]:
    """Docstrings of held-out standard-library modules: text the scorer never saw (it trains on data/corpus)."""
    from uio.train.gate import heldout_texts

    ids: list[int] = []
    for _, text in heldout_texts():
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= n:
            break
    return ids[:n]


AGREE_8, AGREE_32 = 0.53, 0.38  # measured 0.581, 0.436 (see the test's docstring)


@pytest.mark.slow
def test_smollm2_scorer_agrees_with_kvzip_on_a_heldout_document(smollm2):
    """KVzip's kept set that the shipped scorer keeps too, 2 held-out segments, layers and heads averaged.

    Measured 0.581 at 8x and 0.436 at 32x on these two segments with the scorer trained on 432 segments
    (version 1, 40 segments: 0.504 and 0.352; SnapKV's choice: 0.30 and 0.20, key norms: 0.19 and 0.11, a
    random one: 0.12 and 0.03); asserted with a margin of about 0.05.
    """
    torch.set_num_threads(1)
    ids = heldout_document(smollm2.tokenizer, 2048)
    kv, fast = make_compressor("kvzip", 8), make_compressor("kvzip-fast", 8)
    agree = {8: [], 32: []}
    for seg in (ids[:1024], ids[1024:]):
        target = kv.score(smollm2, kv.prefill(smollm2, seg))
        pred = fast.score(smollm2, fast.prefill(smollm2, seg))
        for r in agree:
            agree[r].append(topk_agreement(pred, target, r))
    a8, a32 = (sum(v) / len(v) for v in agree.values())
    assert a8 >= AGREE_8 and a32 >= AGREE_32, (a8, a32)


@pytest.mark.slow
def test_smollm2_scorer_keeps_a_planted_code_more_than_chance(smollm2):
    """Share of (layer, KV head) slots sets at 8x holding each digit of the code: measured 0.330 for kvzip-fast
    (0.234 with the version-1 scorer), 0.364 for KVzip, 0.125 by chance; asserted >= 0.28."""
    torch.set_num_threads(1)
    doc, digits = planted_code_document(smollm2.tokenizer)
    comp = make_compressor("kvzip-fast", 8)
    pre = comp.prefill(smollm2, doc[1024:])
    index = comp.select(comp.score(smollm2, pre).float(), 128)
    kept = torch.zeros(*index.shape[:2], pre.n, dtype=torch.bool).scatter_(-1, index, True)
    assert len(digits) == 10
    assert kept[..., digits].float().mean() >= 0.28


def test_auto_is_kvzip_fast_for_qwen_and_kvzip_where_no_scorer_fits(qwen, tiny_qwen):
    from uio.compress import resolve_compressor

    assert resolve_compressor("auto", "qwen") == "kvzip-fast"
    assert resolve_compressor("auto", "qwen", qwen) == "kvzip-fast"  # the shipped scorer fits the real Qwen
    assert resolve_compressor("auto", "qwen", tiny_qwen) == "kvzip"  # another model under the key: no scorer
    assert resolve_compressor("auto", "smollm2") == "kvzip"
    assert resolve_compressor("kvzip-fast", "qwen", tiny_qwen) == "kvzip-fast"  # named: kept (it refuses later)
