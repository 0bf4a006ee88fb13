"""The training loop on tiny random models: it learns, it resumes exactly, it logs and saves what it says."""
import json

import pytest
import torch
from safetensors import safe_open

from tests.conftest import _tiny
from uio.adapter import UIOAdapter
from uio.train.data import ChainBatches
from uio.train.loop import TrainConfig, lr_factor, train

TINY = dict(model="tiny", recipe="uio", ratio=4, segment_len=16, segments=3, batch_size=2, capacity=1, enc_rank=4, head_rank=4,
            warmup=2, ckpt_every=2)
PROSE = ("The harbour at Varrow Point was quiet in winter. Fishing boats lay on the shingle, and the nets hung "
         "drying between the posts. Every morning the ferryman walked to the end of the pier and looked at the "
         "sky, then went back to his cottage to mend what the storms had broken. ")


def texts(n: int = 6) -> list[str]:
    return [f"Chapter {i}. " + PROSE * (2 + i % 3) for i in range(n)]


def params(adapter: UIOAdapter) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in adapter.named_parameters().items()}


def test_loss_falls_on_a_repeated_text(tokenizer, tmp_path):
    lm = _tiny("llama", tokenizer)
    with torch.no_grad():  # a random model's logits are nearly flat: sharpen them so memories can matter
        lm.model.lm_head.weight.mul_(10)
    cfg = TrainConfig(**TINY, steps=16, lr=3e-2, min_lr=3e-3, continuation=1.0, autoencode=1.0, recall=0.0)
    result = train(cfg, lm, [PROSE * 4], tmp_path, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 16 and result.step == 16
    untrained, last = losses[0], sum(losses[-4:]) / 4
    assert last < 0.9 * untrained, (untrained, last)  # measured: 23.8 -> ~19.4


def test_resume_from_a_checkpoint_continues_exactly(tokenizer, tmp_path):
    """Stopped at step 3 (checkpoint at 2, one step lost), resumed: the same parameters as one run of 4 steps."""
    cfg = TrainConfig(**TINY, steps=4, lr=5e-3, recall=0.5)  # recall: planted facts draw from the RNG
    whole = train(cfg, _tiny("qwen2", tokenizer), texts(), tmp_path / "whole", progress=False)
    part = train(cfg, _tiny("qwen2", tokenizer), texts(), tmp_path / "part", stop_after=3, progress=False)
    assert part.step == 3
    resumed = train(cfg, _tiny("qwen2", tokenizer), texts(), tmp_path / "part",
                    resume=tmp_path / "part" / "checkpoint.pt", progress=False)
    assert resumed.step == 4
    a, b = params(whole.adapter), params(resumed.adapter)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(a[n], params(part.adapter)[n]) for n in a)  # the resumed steps did change them
    rows = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # step 3 was run again and logged once
    whole_rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in whole_rows], rel=1e-6)


def test_metrics_log_has_the_fields_and_the_adapter_its_config(tokenizer, tmp_path):
    cfg = TrainConfig(**TINY, steps=3, recall=0.5)
    lm = _tiny("llama", tokenizer)
    out = tmp_path / "adapters" / "tiny-4x.safetensors"
    result = train(cfg, lm, texts(), tmp_path / "run", adapter_out=out, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("loss", "continuation", "autoencode", "lr", "grad_norm", "tokens", "tokens_per_s", "seconds",
                    "elapsed_s", "epoch", "peak_graphs"):
            assert key in r, key
        assert r["tokens"] == 2 * 3 * 16 and r["tokens_per_s"] > 0 and r["peak_graphs"] <= cfg.capacity + 1
        assert r["loss"] == pytest.approx(r["continuation"] + 0.5 * r["autoencode"] + 0.5 * r.get("recall", 0))
    assert any("recall" in r for r in rows) or cfg.segments < 2
    assert rows[0]["lr"] == pytest.approx(cfg.lr * lr_factor(0, cfg))
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # shipped files are bf16
    assert json.loads(meta["training"])["steps"] == 3 and meta["trained_steps"] == "3"
    loaded = UIOAdapter.load(lm, out)
    assert loaded.config == cfg.memory
    assert loaded.fingerprint == result.adapter.fingerprint  # fingerprints are taken in bf16: no drift


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-4)
    f = [lr_factor(s, cfg) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[100] == pytest.approx(0.1)


def test_chain_batches_replay_to_a_position(tokenizer):
    a = ChainBatches(texts(), tokenizer, 16, 3, 2, seed=5)
    first = [next(a) for _ in range(5)]
    b = ChainBatches(texts(), tokenizer, 16, 3, 2, seed=5)
    b.skip_to(3)
    assert torch.equal(next(b), first[3]) and b.position == 4
    assert first[0].shape == (2, 3, 16)


def test_cli_stops_resumes_and_writes_the_adapter_where_tome_looks(smollm2, tmp_path):
    """`python -m uio.train` on the real SmolLM2 (2 tiny steps): stop, resume, final adapter with its config."""
    from uio.shipped import ADAPTERS_DIR
    from uio.train.__main__ import main
    from uio.train.loop import default_adapter_path

    assert default_adapter_path("smollm2", 8) == ADAPTERS_DIR / "smollm2-8x.safetensors"
    assert default_adapter_path("qwen", 32) == ADAPTERS_DIR / "qwen-32x.safetensors"
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "source": "s", "title": "t", "text": t}) + "\n"
                              for i, t in enumerate(texts())))
    out, adapter = tmp_path / "run", tmp_path / "smollm2-8x.safetensors"
    args = ["--model", "smollm2", "--ratio", "8", "--segment-len", "16", "--segments", "2", "--batch-size", "1",
            "--capacity", "1", "--steps", "2", "--warmup", "1", "--ckpt-every", "1", "--corpus", str(corpus),
            "--out-dir", str(out), "--adapter-out", str(adapter), "--threads", "1"]
    assert main(args + ["--stop-after", "1"]) == 0
    assert (out / "checkpoint.pt").exists() and not adapter.exists()
    assert main(["--resume", str(out / "checkpoint.pt"), "--adapter-out", str(adapter), "--corpus", str(corpus),
                 "--threads", "1"]) == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    with safe_open(str(adapter), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["training"])["segment_len"] == 16 and meta["trained_steps"] == "2"
    loaded = UIOAdapter.load(smollm2, adapter)
    assert loaded.config.num_mem == 2 and loaded.mode == "memory"  # the default recipe: distillation
