"""Attention-Gate on tiny random models: gradients, training signal, inference policy, weights on disk."""
from __future__ import annotations

import pytest
import torch

from uio.cache import AttentionGate, PolicyCache, resolve_policy
from uio.gate import AttentionGates, GateConfig, collect_hidden, straight_through
from uio.generate import stream
from uio.train.gate import GatedModel, calibrate, collect_layer_inputs, eviction, gate_loss, lm_loss, local_loss


def _ids(lm, n: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.model.config.vocab_size, (batch, n), generator=g)


def _read(lm, policy, ids: torch.Tensor, chunk: int) -> PolicyCache:
    """A PolicyCache that read ``ids`` in chunks, evicting after each."""
    pc = PolicyCache(lm.model, policy)
    with torch.no_grad():
        for i in range(0, ids.shape[1], chunk):
            pc.forward(ids[:, i:i + chunk])
            pc.evict()
    return pc


def _gates(lm, seed: int = 0, **kw) -> AttentionGates:
    torch.manual_seed(seed)
    return AttentionGates(GateConfig.for_model(lm.model, base_model="tiny", **kw))


def test_straight_through_is_hard_forward_and_passes_gradient():
    p = torch.tensor([0.2, 0.5, 0.9, 0.49], requires_grad=True)
    g = straight_through(p)
    assert g.tolist() == [0.0, 1.0, 1.0, 0.0]
    (g * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert p.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_gate_keeping_everything_leaves_the_model_unchanged(tiny_llama):
    ids = _ids(tiny_llama, 40, batch=2)
    with torch.no_grad():
        ref = tiny_llama.model(ids).logits
    gm = GatedModel(tiny_llama.model, _gates(tiny_llama, init_bias=20.0))
    try:
        with torch.no_grad():
            got, run = gm(ids, train=False)
    finally:
        gm.close()
    assert float(eviction(run, hard=True)) == 0.0
    assert torch.allclose(got, ref, atol=1e-5)
    assert tiny_llama.model.config._attn_implementation != "tome_gated"


def test_lm_loss_reaches_the_gate_through_the_straight_through_estimator(tiny_llama):
    gates = _gates(tiny_llama, init_bias=0.0)
    gm = GatedModel(tiny_llama.model, gates)
    try:
        logits, run = gm(_ids(tiny_llama, 48))
        lm_loss(logits, _ids(tiny_llama, 48)).backward()
    finally:
        gm.close()
    grads = [p.grad for p in gates.layers[0].parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("objective", ["lm", "local"])
def test_eviction_rate_moves_to_the_target(tiny_llama, objective):
    gates = _gates(tiny_llama)
    opt = torch.optim.Adam(gates.parameters(), lr=0.05)
    ids = _ids(tiny_llama, 64, batch=2)
    inputs = collect_layer_inputs(tiny_llama.model, ids, dtype=torch.float32)
    gm = GatedModel(tiny_llama.model, gates)
    rates = []
    try:
        for _ in range(12):
            if objective == "lm":
                loss, rec = gate_loss(gm, ids, target=0.6, weight=10.0)
            else:
                loss, rec = local_loss(tiny_llama.model, gates, inputs, target=0.6, weight=10.0, queries=16)
            rates.append(rec["evict_soft"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        gm.close()
    assert rates[0] < 0.1  # sigmoid(3): keeps nearly everything at first
    assert abs(rates[-1] - 0.6) < 0.2


def test_gate_in_chunks_with_its_state_equals_one_pass(tiny_llama):
    gate = _gates(tiny_llama, window=8).layers[0]
    h = torch.randn(1, 30, tiny_llama.model.config.hidden_size)
    with torch.no_grad():
        whole, _ = gate.step(h)
        parts, state = [], None
        for i in range(0, 30, 7):
            p, state = gate.step(h[:, i:i + 7], state)
            parts.append(p)
            assert state[0].shape[2] <= 7  # window - 1 tokens of its own K/V
        singles, state = [], None  # decoding: one token at a time
        for i in range(30):
            p, state = gate.step(h[:, i:i + 1], state)
            singles.append(p)
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-6)
    assert torch.allclose(torch.cat(singles, 1), whole, atol=1e-6)


@pytest.mark.parametrize("dense", [3, 512])
@pytest.mark.parametrize("seen", [0, 10])
def test_gate_attention_per_query_window_equals_the_whole_band(tiny_llama, monkeypatch, dense, seen):
    import torch.nn.functional as F

    import uio.gate

    monkeypatch.setattr(uio.gate, "BAND_DENSE", dense)  # 3: the per-query windows; 512: one masked SDPA
    gate = _gates(tiny_llama, window=8).layers[0]
    torch.manual_seed(1)
    h = torch.randn(2, seen + 30, tiny_llama.model.config.hidden_size)  # a batch of two, as in training
    with torch.no_grad():
        state = gate.step(h[:, :seen])[1] if seen else None  # a state of window - 1 tokens, or none (padded)
        got, _ = gate.step(h[:, seen:], state)
        # the whole band at once, as one (q, past + q) mask
        x = h[:, seen:]
        qs, ks, vs = gate.qkv(x).view(2, 30, 3, gate.heads, gate.head_dim).permute(2, 0, 3, 1, 4)
        if state:
            ks, vs = torch.cat([state[0], ks], 2), torch.cat([state[1], vs], 2)
        past = ks.shape[2] - 30
        qi, kj = torch.arange(30)[:, None] + past, torch.arange(ks.shape[2])[None]
        mixed = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=(kj <= qi) & (kj > qi - 8))
        want = torch.sigmoid(gate.out(mixed.transpose(1, 2).reshape(2, 30, -1)) + gate.direct(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_collect_hidden_sees_every_layer(tiny_llama):
    with collect_hidden(tiny_llama.model) as seen, torch.no_grad():
        tiny_llama.model(_ids(tiny_llama, 10))
    assert sorted(seen) == [0, 1]
    assert seen[0].shape == (1, 10, tiny_llama.model.config.hidden_size)


def test_gate_policy_keeps_sinks_recent_and_confident_tokens(tiny_llama):
    gates = _gates(tiny_llama, sink=2, recent=8, init_bias=0.0)
    for layer in gates.layers:  # a gate that keeps a token where the first hidden unit is positive
        layer.out.weight.data.zero_()
        layer.direct.weight.data.zero_()
        layer.direct.weight.data[:, 0] = 50.0
    ids = _ids(tiny_llama, 64)
    policy = AttentionGate(weights=gates, threshold=0.5)
    with collect_hidden(tiny_llama.model) as seen, torch.no_grad():
        tiny_llama.model(ids)
    pc = _read(tiny_llama, policy, ids, 16)
    # Layer 0 reads the embeddings, the same with or without eviction: its decisions are known exactly.
    confident = set(torch.nonzero(seen[0][0, :, 0] > 0).flatten().tolist())
    expect = sorted(set(range(2)) | set(range(56, 64)) | confident)
    for h in range(2):
        held = pc.positions[0][h]
        assert held[held >= 0].tolist() == expect
    assert set(range(2)) | set(range(56, 64)) <= set(pc.positions[1][0].tolist())
    assert 0.2 < pc.eviction_rate() < 0.8


def test_gate_at_a_target_eviction_uses_the_calibrated_threshold(tiny_llama, tmp_path):
    gates = _gates(tiny_llama, init_bias=0.0)
    ids = _ids(tiny_llama, 96)
    gates.quantiles = calibrate(tiny_llama.model, gates, [ids])
    assert len(gates.quantiles) == 101 and gates.quantiles == sorted(gates.quantiles)
    path = tmp_path / "gate.safetensors"
    gates.save(path)
    policy = resolve_policy("gate", 0.5, gate_file=path)
    assert policy.target_eviction is None and policy.threshold == pytest.approx(gates.quantiles[50], abs=1e-3)
    gen = stream(tiny_llama, [{"role": "user", "content": "word " * 60}], policy, max_new_tokens=8)
    "".join(gen)
    assert gen.stats.policy == "gate" and 0.2 < gen.stats.eviction_rate < 0.7


def test_gate_with_a_recency_window_keeps_the_newest_share_of_its_budget(tiny_llama, tmp_path):
    gates = _gates(tiny_llama, init_bias=0.0)
    gates.quantiles = calibrate(tiny_llama.model, gates, [_ids(tiny_llama, 96)])
    path = tmp_path / "gate.safetensors"
    gates.save(path)
    policy = resolve_policy("gate", 0.6, gate_file=path, gate_window=0.5)
    assert policy.window_share == 0.5 and policy.target_eviction == 0.6
    pc = _read(tiny_llama, policy, _ids(tiny_llama, 192), 32)
    window = -(-int(0.5 * 0.4 * 192 * 1000) // 1000)  # ceil(0.5 * budget) = 39 newest tokens
    for layer in range(len(pc.positions)):
        for h in range(pc.positions[layer].shape[0]):
            held = set(pc.positions[layer][h].tolist())
            assert set(range(192 - window, 192)) <= held and set(range(4)) <= held
    assert 0.45 < pc.eviction_rate() < 0.75


def test_uncalibrated_gate_follows_the_target_online(tiny_llama, tmp_path):
    path = tmp_path / "gate.safetensors"
    _gates(tiny_llama, init_bias=0.0).save(path)
    policy = resolve_policy("gate", 0.5, gate_file=path)
    assert policy.target_eviction == 0.5
    pc = _read(tiny_llama, policy, _ids(tiny_llama, 160), 32)
    assert 0.4 < pc.eviction_rate() < 0.65


def test_weights_round_trip_and_refuse_another_model(tiny_llama, tmp_path):
    gates = _gates(tiny_llama, heads=2, head_dim=8)
    path = tmp_path / "g.safetensors"
    gates.save(path)
    back = AttentionGates.load(path, base_model="tiny")
    assert back.config == gates.config and back.quantiles == [] and back.threshold_for(0.5) is None
    h = torch.randn(1, 5, tiny_llama.model.config.hidden_size)
    with torch.no_grad():
        assert torch.allclose(back.layers[1].step(h)[0], gates.layers[1].step(h)[0], atol=2e-3)  # stored fp16
    with pytest.raises(ValueError, match="trained for 'tiny'"):
        AttentionGates.load(path, base_model="qwen")
    with pytest.raises(FileNotFoundError, match="uio.train.gate"):
        AttentionGates.load(tmp_path / "none.safetensors")


def test_gate_fits_only_a_model_of_its_shape(tiny_llama, smollm2, tmp_path):
    from uio.cache import gate_fits
    from uio.shipped import gate_path

    path = tmp_path / "g.safetensors"
    _gates(tiny_llama).save(path)
    assert gate_fits(path, tiny_llama.model) and not gate_fits(path, smollm2.model)
    assert gate_fits(gate_path("smollm2"), smollm2.model)
    assert not gate_fits(gate_path("smollm2"), tiny_llama.model)


def test_training_can_start_from_saved_gates(tiny_llama, tmp_path):
    """--init fine-tunes saved gates (a local-objective gate with the LM objective) instead of fresh ones."""
    from uio.train.gate import main

    model_dir = tmp_path / "model"
    tiny_llama.model.save_pretrained(model_dir)
    tiny_llama.tokenizer.save_pretrained(model_dir)
    start = _gates(tiny_llama)
    start.config.base_model = str(model_dir)
    with torch.no_grad():
        start.layers[1].out.bias.fill_(-2.0)  # unlike a fresh gate's +3
    start.save(tmp_path / "start.safetensors")
    out = tmp_path / "tuned.safetensors"
    main(["--model", str(model_dir), "--init", str(tmp_path / "start.safetensors"), "--objective", "lm",
          "--steps", "2", "--lr", "0", "--seq-len", "32", "--batch", "1", "--calibrate", "1", "--threads", "1",
          "--out", str(out), "--log", str(tmp_path / "log.jsonl")])
    tuned = AttentionGates.load(out, base_model=str(model_dir))
    assert torch.equal(tuned.layers[1].out.bias, torch.full((2,), -2.0))  # lr 0: what it started from
    assert len(tuned.quantiles) == 101


def test_blend_interpolates_weights_and_refuses_other_shapes(tiny_llama):
    from uio.train.gate_blend import blend

    a, b = _gates(tiny_llama, seed=1), _gates(tiny_llama, seed=2)
    mid = blend(a, b, 0.25)
    wa, wb, wm = (g.layers[1].qkv.weight for g in (a, b, mid))
    assert torch.allclose(wm, 0.75 * wa + 0.25 * wb)
    assert torch.equal(blend(a, b, 0.0).layers[0].out.bias, a.layers[0].out.bias)
    with pytest.raises(ValueError, match="shapes"):
        blend(a, _gates(tiny_llama, heads=4), 0.5)


def test_decoded_tokens_are_judged_together_at_eviction_as_in_one_pass(tiny_llama):
    """Tokens decoded one at a time wait for the next eviction and get the keep probabilities one
    forward over all of them gives (the gate is causal and carries its own state)."""
    gates = _gates(tiny_llama, window=8)
    ids = _ids(tiny_llama, 24)
    one, steps = PolicyCache(tiny_llama.model, AttentionGate(weights=gates)), PolicyCache(
        tiny_llama.model, AttentionGate(weights=gates))
    with torch.no_grad():
        one.forward(ids)
        for i in range(24):
            steps.forward(ids[:, i:i + 1])
        assert steps.policy.prob_history[0] == [] and len(steps.policy._pending[0]) == 24  # nothing judged yet
        one.evict()
        steps.evict()
    for layer in range(tiny_llama.model.config.num_hidden_layers):
        assert torch.allclose(torch.cat(steps.policy.prob_history[layer], 1),
                              torch.cat(one.policy.prob_history[layer], 1), atol=1e-5)
        assert torch.equal(steps.positions[layer], one.positions[layer])


def test_a_short_prompt_chunk_is_judged_at_the_eviction_after_it_a_long_one_at_once(tiny_llama, monkeypatch):
    """A short prompt's first token does not wait for the gate: its chunk is judged when the eviction after
    that token runs, with the probabilities and evictions of judging it at once."""
    import uio.cache.attention_gate as ag

    gates = _gates(tiny_llama, window=8)
    ids = _ids(tiny_llama, 40)
    runs = {}
    for hold in (64, 16):  # 64: the 40-token chunk is held; 16: judged as it is read
        monkeypatch.setattr(ag, "HOLD_TOKENS", hold)
        pc = PolicyCache(tiny_llama.model, AttentionGate(weights=gates, target_eviction=0.5))
        with torch.no_grad():
            pc.forward(ids)
            runs[hold] = [len(pc.policy._pending[0]), len(pc.policy.prob_history[0])]
            pc.evict()
        runs[hold].append(pc)
    assert runs[64][:2] == [1, 0] and runs[16][:2] == [0, 1]
    held, at_once = runs[64][2], runs[16][2]
    for layer in range(tiny_llama.model.config.num_hidden_layers):
        assert torch.equal(torch.cat(held.policy.prob_history[layer], 1),
                           torch.cat(at_once.policy.prob_history[layer], 1))
        assert torch.equal(held.positions[layer], at_once.positions[layer])
    assert held.eviction_rate() == at_once.eviction_rate() > 0


def test_auto_is_the_gate_only_where_a_fitting_gate_ships_for_a_model_in_auto_gates(tiny_llama, tmp_path,
                                                                                    monkeypatch):
    from types import SimpleNamespace

    import uio.shipped
    from uio.cache import AUTO_GATES, FullCache

    monkeypatch.setattr(uio.shipped, "WEIGHTS_DIR", tmp_path)  # shipped gates: tiny ones saved here
    other_shape = SimpleNamespace(config=SimpleNamespace(hidden_size=32, num_hidden_layers=2, num_key_value_heads=2))
    assert "qwen" in AUTO_GATES and "smollm2" not in AUTO_GATES
    # No gate ships: auto is the full cache, the gate by name is refused.
    assert isinstance(resolve_policy("auto", 0.6, "qwen", tiny_llama.model), FullCache)
    with pytest.raises(ValueError, match="pick another cache policy"):
        resolve_policy("gate", 0.6, "qwen", tiny_llama.model)
    for key in ("qwen", "smollm2"):
        gates = _gates(tiny_llama)
        gates.config.base_model = key
        gates.save(uio.shipped.gate_path(key))
    auto = resolve_policy("AUTO", 0.6, "qwen", tiny_llama.model)
    assert isinstance(auto, AttentionGate) and auto.weights.config.base_model == "qwen"
    assert auto.target_eviction == 0.6  # uncalibrated: the target, online
    assert isinstance(resolve_policy("auto", 0.6, "qwen"), AttentionGate)  # model not loaded: the file counts
    # A gate of another shape than the loaded model does not count as shipped.
    assert isinstance(resolve_policy("auto", 0.6, "qwen", other_shape), FullCache)
    with pytest.raises(ValueError, match="no Attention-Gate weights ship"):
        resolve_policy("gate", 0.6, "qwen", other_shape)
    # A model not in AUTO_GATES: full by default, its gate selectable by name.
    assert isinstance(resolve_policy("auto", 0.6, "smollm2", tiny_llama.model), FullCache)
    assert isinstance(resolve_policy("gate", 0.6, "SmolLM2", tiny_llama.model), AttentionGate)
    assert isinstance(resolve_policy("auto", 0.6, None, tiny_llama.model), FullCache)
