"""The distillation recipe in the training loop: exact resume across the curriculum, checkpoint size, and a
20-step SmolLM2 run that lowers the held-out KL."""
import json
import random

import pytest
import torch

from tests.conftest import _tiny
from uio.train.loop import TrainConfig, Trainer, make_data, train

PROSE = ("The harbour at Varrow Point was quiet in winter. Fishing boats lay on the shingle, and the nets hung "
         "drying between the posts. Every morning the ferryman walked to the end of the pier and looked at the "
         "sky, then went back to his cottage to mend what the storms had broken. ")
TINY = dict(model="tiny", recipe="distill", ratio=4, segment_len=32, segments=2, batch_size=1, capacity=1,
            enc_rank=4, head_rank=4, warmup=2, ckpt_every=2, short_len=16, short_frac=0.5, planted=0.5,
            passkey=0.0, autoencode_len=4)


def texts(n: int = 6) -> list[str]:
    return [f"Chapter {i}. " + PROSE * (2 + i % 3) for i in range(n)]


def prose(seed: str, n_docs: int, sentences: int) -> list[str]:
    """Varied generated prose (bench/qa/planted.py's grammar): no file or corpus needed."""
    from bench.qa.planted import _filler_sentence

    rng = random.Random(seed)
    return [" ".join(_filler_sentence(rng) for _ in range(sentences)) for _ in range(n_docs)]


def params(adapter):
    return {n: p.detach().clone() for n, p in adapter.named_parameters().items()}


def test_distill_resume_is_bit_identical_across_the_curriculum(tokenizer, tmp_path):
    """Steps 1-2 at l = 16 (2 rows: the same tokens per batch), 3-4 at l = 32 (1 row); stopped at 3 (checkpoint at 2), resumed: equal to one run."""
    cfg = TrainConfig(**TINY, steps=4, lr=5e-3)
    assert cfg.short_steps == 2
    whole = train(cfg, _tiny("qwen2", tokenizer), texts(), tmp_path / "whole", progress=False)
    part = train(cfg, _tiny("qwen2", tokenizer), texts(), tmp_path / "part", stop_after=3, progress=False)
    resumed = train(cfg, _tiny("qwen2", tokenizer), texts(), tmp_path / "part",
                    resume=tmp_path / "part" / "checkpoint.pt", progress=False)
    assert resumed.step == 4 and resumed.adapter.mode == "memory"
    a, b = params(whole.adapter), params(resumed.adapter)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(a[n], params(part.adapter)[n]) for n in a)
    rows = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    whole_rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["segment_len"] for r in rows] == [16, 16, 32, 32]
    assert [r["tokens"] for r in rows] == [2 * 2 * 16, 2 * 2 * 16, 1 * 2 * 32, 1 * 2 * 32]
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole_rows]  # bit for bit
    for r in rows:
        for key in ("kl", "attention", "autoencode", "lr", "grad_norm", "tokens_per_s", "peak_graphs"):
            assert key in r, key
    assert any("answer_ce" in r for r in rows)  # planted facts were asked about


def test_a_run_can_start_from_an_adapter_trained_at_another_length(tokenizer, tmp_path):
    """The curriculum across runs: l = 16 adapter -> a run at l = 32 starts from its weights exactly."""
    from uio.adapter import UIOAdapter
    from uio.memory import MemoryMismatch

    short = {**TINY, "segment_len": 16, "short_len": 0, "segments": 1}
    first = train(TrainConfig(**short, steps=2, lr=5e-3), _tiny("qwen2", tokenizer), texts(), tmp_path / "short",
                  adapter_out=tmp_path / "short.safetensors", progress=False)
    saved = params(first.adapter)
    lm = _tiny("qwen2", tokenizer)
    cfg = TrainConfig(**{**short, "segment_len": 32}, steps=1, init_adapter=str(tmp_path / "short.safetensors"))
    trainer = Trainer(cfg, lm, make_data(cfg, texts(), tokenizer), tmp_path / "long")
    assert trainer.adapter.config.segment_len == 32 and trainer.adapter.config.num_mem == 8
    started = params(trainer.adapter)
    for name, value in saved.items():  # the file is bf16: equal at that precision
        assert torch.equal(started[name], value.to(torch.bfloat16).float()), name
    assert any(v.abs().sum() > 0 for n, v in started.items() if "lora_B" in n)  # trained weights, not a fresh start
    for p in trainer.adapter.parameters():
        p.requires_grad_(False)
    relabelled = train(TrainConfig(**{**short, "segment_len": 32}, steps=0,
                                   init_adapter=str(tmp_path / "short.safetensors")),
                       _tiny("qwen2", tokenizer), texts(), tmp_path / "zero", adapter_out=tmp_path / "l32.safetensors",
                       progress=False)  # --steps 0: the same weights, saved for 32-token segments
    again = UIOAdapter.load(_tiny("qwen2", tokenizer), tmp_path / "l32.safetensors")
    assert relabelled.step == 0 and again.config.segment_len == 32
    from safetensors import safe_open

    with safe_open(str(tmp_path / "l32.safetensors"), "pt") as f:
        history = json.loads(f.metadata()["started_from"])
    assert history["trained_steps"] == "2" and json.loads(history["training"])["segment_len"] == 16
    assert all(torch.equal(again.state_dict()[n].float(), v) for n, v in started.items())
    other = UIOAdapter(_tiny("qwen2", tokenizer), TrainConfig(**{**short, "ratio": 2}).memory, mode="memory")
    with pytest.raises(MemoryMismatch, match="ratio"):
        other.adopt(tmp_path / "short.safetensors")
    with pytest.raises(MemoryMismatch, match="encoder_mode"):
        UIOAdapter(_tiny("qwen2", tokenizer), cfg.memory).adopt(tmp_path / "short.safetensors")


def test_data_mix_is_replayable_and_uses_training_seeds(tokenizer, monkeypatch):
    from bench.qa import passkey

    seeds = []
    real = passkey.passkey_document

    def recording(tok, n, depth, seed=0):
        seeds.append(seed)
        return real(tok, n, depth, seed=seed)

    monkeypatch.setattr(passkey, "passkey_document", recording)
    cfg = TrainConfig(**{**TINY, "segment_len": 128, "batch_size": 2, "short_len": 0, "passkey": 0.3, "planted": 0.3},
                      steps=10)
    data = make_data(cfg, texts(8), tokenizer)
    first = [next(data) for _ in range(6)]
    kinds = [p.labels is not None for b in first for p in b.probes]
    assert any(kinds) and not all(kinds)  # QA probes mixed with continuations
    again = make_data(cfg, texts(8), tokenizer)
    again.skip_to(2)
    b = next(again)
    assert torch.equal(b.segments, first[2].segments)
    assert all(torch.equal(x.ids, y.ids) for x, y in zip(b.probes, first[2].probes))
    decoded = [tokenizer.decode(s) for bt in first for s in bt.segments.flatten(0, 1)]
    assert any("The pass key is " in d for d in decoded)
    assert seeds and min(seeds) >= 10**6  # bench/eval_compress.py draws pass keys from seeds below 10**5


def test_checkpoint_of_smollm2_fits_in_16_mb(smollm2, tmp_path):
    cfg = TrainConfig(model="smollm2", ratio=8, segment_len=32, segments=1, batch_size=1, capacity=1, steps=2,
                      warmup=1, ckpt_every=0, short_len=0, passkey=0.0, planted=0.0)
    trainer = Trainer(cfg, smollm2, make_data(cfg, prose("ckpt", 4, 60), smollm2.tokenizer), tmp_path)
    try:
        trainer.train_step()
        size = trainer.save_checkpoint().stat().st_size
    finally:
        for p in trainer.adapter.parameters():
            p.requires_grad_(False)
    assert size <= 16 * 2**20, size / 2**20
    assert size > 10 * 2**20  # float32 weights (6.6 MB) + bf16 moments: it does hold the optimizer


@pytest.mark.slow
def test_twenty_steps_on_smollm2_lower_the_heldout_kl(smollm2, tmp_path):
    """The integration check of the recipe: 20 CPU steps (l = 64, 8x) lower the held-out KL to the teacher."""
    torch.set_num_threads(1)
    cfg = TrainConfig(model="smollm2", ratio=8, segment_len=64, segments=1, batch_size=2, capacity=1, steps=20,
                      warmup=2, lr=3e-3, min_lr=3e-4, short_len=0, passkey=0.0, planted=0.2, ckpt_every=0,
                      eval_every=20, eval_batches=3, seed=0)
    result = train(cfg, smollm2, prose("train", 20, 120), tmp_path, heldout=prose("heldout", 4, 120),
                   progress=False)
    for p in result.adapter.parameters():
        p.requires_grad_(False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    before, after = rows[0]["heldout_kl"], rows[-1]["heldout_kl"]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 20
    assert after < 0.85 * before, (before, after)
