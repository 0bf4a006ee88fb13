"""The kvzip-fast scorer's cross-token features (``uio.compress.scorer.cross_features``): their values against
explicit computations, how the compressor feeds them to the scorer, old (version 1) weights still loading with
their digest, and the trainer's targets carrying them. Tiny random models only."""
import json
import math

import torch

from uio.adapter import body
from uio.compress import make_compressor
from uio.compress.base import ScoringCompressor
from uio.compress.scorer import (CROSS_FEATURES, REQUEST_OFFSET, WINDOW, KVScorer, ScorerConfig, cross_dim,
                                 cross_features)
from uio.gate import attention_inputs


def tokens(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 5000, (n,), generator=g).tolist()


class Grab(ScoringCompressor):
    """The prefill's rotated queries and keys per layer (what ``observe`` sees)."""

    def observe(self, module, query, keys):
        return module, query.clone(), keys.clone()


def rope(x: torch.Tensor, pos: int, rotary) -> torch.Tensor:
    cos, sin = rotary(x, position_ids=torch.tensor([[pos]]))
    a, b = x.chunk(2, -1)
    return x * cos[0, 0] + torch.cat([-b, a], -1) * sin[0, 0]


def test_cross_features_match_an_explicit_computation(tiny_llama):
    """Each feature against its definition from the pre-RoPE queries and keys of a real (tiny) prefill."""
    n = 40
    pre = Grab().prefill(tiny_llama, tokens(n, 1))
    module, query, keys = pre.observed[1]
    rotary = body(tiny_llama).rotary_emb
    got = cross_features(module, query, keys, rotary, stride=1)
    assert got.shape == (2, n, cross_dim(1)) == (2, n, CROSS_FEATURES + 2)
    h, kv, g = query.shape[1], keys.shape[1], query.shape[1] // keys.shape[1]
    # undo the prefill's rotation, then place query t-1 where KVzip's copy asks from: position t-1 + n + 16
    q_raw = torch.stack([rope(query[0, :, t], -t, rotary) for t in range(n)], 1)  # (H, n, d)
    k_raw = torch.stack([rope(keys[0, :, t], -t, rotary) for t in range(n)], 1)
    for head in range(kv):
        for t in (1, 7, n - 1):
            far = []
            for qh in range(head * g, head * g + g):
                qf = rope(q_raw[qh, t - 1], t - 1 + n + REQUEST_OFFSET, rotary)
                logits = torch.stack([qf @ rope(k_raw[head, j], j, rotary) for j in range(n)]) * module.scaling
                far.append((logits[t], logits[t] - logits.logsumexp(0)))
            f = torch.tensor(far)
            want = [f[:, 0].max(), f[:, 0].mean(), keys[0, head, t].norm(), None, f[:, 1].max(), f[:, 1].mean()]
            for i, w in enumerate(want):
                if w is not None:
                    torch.testing.assert_close(got[head, t, i], w.float(), atol=1e-4, rtol=1e-4)
        assert torch.equal(got[head, 0, [0, 1, 4, 5]], torch.zeros(4))  # token 0 has no predecessor
    # window: log of the max attention on each key from the last WINDOW queries of the layer's own prefill
    probs = torch.einsum("hqd,hkd->hqk", query[0, :, n - WINDOW:], keys[0].repeat_interleave(g, 0)) * module.scaling
    mask = torch.arange(n)[None] > torch.arange(WINDOW)[:, None] + (n - WINDOW)
    probs = probs.masked_fill(mask, float("-inf")).softmax(-1).view(kv, g, WINDOW, n).amax(dim=(1, 2))
    torch.testing.assert_close(got[..., 3], probs.clamp_min(1e-6).log(), atol=1e-4, rtol=1e-4)


def test_strided_normaliser_estimates_the_full_one(tiny_llama):
    pre = Grab().prefill(tiny_llama, tokens(256, 2))
    module, query, keys = pre.observed[0]
    rotary = body(tiny_llama).rotary_emb
    full, strided = (cross_features(module, query, keys, rotary, stride=s) for s in (1, 4))
    assert torch.equal(full[..., :CROSS_FEATURES], strided[..., :CROSS_FEATURES])
    assert cross_features(module, query, keys, rotary).shape[-1] == CROSS_FEATURES
    err = (full[..., 4:] - strided[..., 4:])[:, 1:].abs()
    assert float(err.mean()) < 0.5  # log shares: the estimate is off by well under a factor e on average
    assert float(torch.corrcoef(torch.stack([full[..., 4].flatten(), strided[..., 4].flatten()]))[0, 1]) > 0.9


def cross_scorer(lm, path, stride: int = 2, seed: int = 0) -> KVScorer:
    torch.manual_seed(seed)
    scorer = KVScorer(ScorerConfig.for_model(lm, rank=8, repeats=True, cross=True, cross_stride=stride))
    for mod in scorer.layers:
        torch.nn.init.normal_(mod.inp.weight, std=0.5)
        torch.nn.init.normal_(mod.cross_w, std=1.0)
    scorer.save(path)
    return KVScorer.load(path, lm)


def test_compressor_feeds_the_cross_features_to_the_scorer(tiny_qwen, tmp_path):
    path = tmp_path / "cross.safetensors"
    scorer = cross_scorer(tiny_qwen, path)
    assert scorer.config.cross and scorer.config.cross_dim == 6
    seg = tokens(80, 3)
    with attention_inputs(tiny_qwen.model) as seen:
        grabbed = Grab().prefill(tiny_qwen, seg).observed
    rotary = body(tiny_qwen).rotary_emb
    want = torch.stack([scorer(layer, seen[layer], torch.tensor(seg),
                               cross=cross_features(m, q, k, rotary, stride=2))
                        for layer, (m, q, k) in enumerate(grabbed)])
    comp = make_compressor("kvzip-fast", 8, weights=str(path), store="model")
    got = comp.score(tiny_qwen, comp.prefill(tiny_qwen, seg))
    torch.testing.assert_close(got, want)
    for mod in scorer.layers:
        mod.cross_w.data.zero_()
    no_cross = torch.stack([scorer(layer, seen[layer], torch.tensor(seg),
                                   cross=cross_features(m, q, k, rotary, stride=2))
                            for layer, (m, q, k) in enumerate(grabbed)])
    assert not torch.equal(comp.select(want, 10), comp.select(no_cross, 10))  # the cross weights decided
    mem = comp.compress(tiny_qwen, [seg, tokens(30, 4)])
    assert mem.slots == [10, 4]


def test_version_1_weights_load_and_keep_their_digest(tiny_llama, tmp_path):
    """A config without the cross fields (as version-1 files have) loads, scores without them, and its digest is
    the sha256 over that old config."""
    import hashlib

    from safetensors.torch import load_file, save_file

    torch.manual_seed(5)
    scorer = KVScorer(ScorerConfig.for_model(tiny_llama, rank=8, repeats=True))
    path = scorer.save(tmp_path / "v2.safetensors")
    cfg = json.loads(json.dumps(scorer.config.__dict__))
    cfg.pop("cross"), cfg.pop("cross_stride")
    old = tmp_path / "v1.safetensors"
    save_file(load_file(str(path)), str(old), metadata={"format": "tome-kv-scorer", "base_model": "tiny-llama",
                                                         "config": json.dumps(cfg)})
    loaded = KVScorer.load(old, tiny_llama)
    assert not loaded.config.cross and not hasattr(loaded.layers[0], "cross_w")
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for k, v in sorted(loaded.state_dict().items()):
        h.update(k.encode())
        h.update(v.to(torch.float16).numpy().tobytes())
    assert loaded.digest() == h.hexdigest() == scorer.digest()
    mem = make_compressor("kvzip-fast", 8, weights=str(old)).compress(tiny_llama, [tokens(64, 6)])
    assert mem.slots == [8]


def test_trainer_targets_carry_the_cross_features(tiny_llama, tmp_path):
    from uio.train.scorer import heldout_agreement, make_target, segment_loss, feature_stats

    seg = tokens(96, 7)
    rec = make_target(tiny_llama, seg, keep_tokens=40, seed=0, stride=2)
    assert rec["cross"].shape == (2, 2, 40, cross_dim(2)) and rec["cross_stride"] == 2
    pre = Grab().prefill(tiny_llama, seg)
    m, q, k = pre.observed[1]
    torch.testing.assert_close(rec["cross"][1], cross_features(m, q, k, body(tiny_llama).rotary_emb, 2)[:, rec["index"]])
    torch.save(rec, tmp_path / "t.pt")
    torch.save(make_target(tiny_llama, seg, None, seed=0, stride=2), tmp_path / "h.pt")
    for stride in (2, 0):  # with and without the normalised pair, from the same targets
        scorer = KVScorer(ScorerConfig.for_model(tiny_llama, rank=4, repeats=True, cross=True, cross_stride=stride))
        feature_stats(scorer, [tmp_path / "t.pt"])
        c = rec["cross"][0][..., :scorer.config.cross_dim]
        torch.testing.assert_close(scorer.layers[0].cross_mean, c.mean(1))
        loss, parts = segment_loss(scorer, rec, 1.0, 0.5)
        loss.backward()
        assert scorer.layers[0].cross_w.grad.abs().sum() > 0 and math.isfinite(float(loss.detach()))
        agree = heldout_agreement(scorer, [tmp_path / "h.pt"])
        assert 0.0 <= agree["agree8"] <= 1.0
