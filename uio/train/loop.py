"""The training loop: batches of chains -> chain_step -> AdamW, with checkpoints that resume exactly.

One step takes a (B, T, l) batch (B documents in parallel, T segments each),
runs the memory chain with reservoir TBPTT (``chain_step``), clips the
gradient norm and steps AdamW under a linear-warmup + cosine learning-rate
schedule. A checkpoint holds everything the next step depends on (adapter,
optimizer, scheduler, step, Python/torch RNG states, data position), so
``train(..., resume=ckpt)`` continues exactly as if never stopped. Metrics go
to a JSONL file, one line per step.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import torch

from uio.adapter import UIOAdapter
from uio.encoder import Encoder
from uio.memory import MemoryConfig
from uio.model import LoadedModel
from uio.train.chain import ObjectiveWeights, chain_step
from uio.train.data import ChainBatches
from uio.train.tbptt import ReservoirTBPTT

CKPT_FORMAT = "tome-uio-train-1"


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Saved in every checkpoint and in the final adapter's metadata."""

    model: str = "smollm2"
    ratio: int = 8  # l / M
    segment_len: int = 1024  # l
    segments: int = 8  # T: segments per chain (document)
    batch_size: int = 4  # B: chains in parallel
    capacity: int = 4  # S: encoder graphs kept by reservoir TBPTT (S >= T: full BPTT)
    steps: int = 1000  # length of the schedule
    lr: float = 5e-4
    min_lr: float = 5e-5  # the cosine ends here
    warmup: int = 50
    weight_decay: float = 0.01
    clip: float = 1.0
    continuation: float = 1.0
    autoencode: float = 0.5
    recall: float = 0.5
    enc_rank: int = 16
    head_rank: int = 16
    seed: int = 0
    ckpt_every: int = 100

    @property
    def memory(self) -> MemoryConfig:
        return MemoryConfig(segment_len=self.segment_len, num_mem=self.segment_len // self.ratio,
                            enc_rank=self.enc_rank, enc_alpha=2 * self.enc_rank,
                            head_rank=self.head_rank, head_alpha=2 * self.head_rank)

    @property
    def weights(self) -> ObjectiveWeights:
        return ObjectiveWeights(self.continuation, self.autoencode, self.recall)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr before optimizer step ``step`` (0-based): linear warmup, then cosine to min_lr."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def default_adapter_path(model: str, ratio: int) -> Path:
    """Where the service looks for the shipped adapter of a model and ratio (uio.shipped.adapter_path)."""
    from uio.model import embedded_key
    from uio.shipped import adapter_path

    return adapter_path(embedded_key(model) or Path(model).name, ratio)


@dataclass
class TrainResult:
    adapter: UIOAdapter
    step: int
    last: dict  # the last step's metrics


class Trainer:
    """Holds the adapter, optimizer, schedule, RNGs and data of one run."""

    def __init__(self, cfg: TrainConfig, lm: LoadedModel, data: ChainBatches, out_dir: str | Path,
                 autocast: torch.dtype | None = None):
        self.cfg, self.lm, self.data = cfg, lm, data
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out_dir / "metrics.jsonl"
        if autocast is None and lm.device.type == "cuda":
            autocast = torch.bfloat16
        self.autocast = autocast
        torch.manual_seed(cfg.seed)
        self.adapter = UIOAdapter(lm, cfg.memory)
        self.params = self.adapter.parameters()
        for p in self.params:
            if p.dtype != torch.float32:  # master weights in float32; bf16 only inside autocast
                p.data = p.data.float()
            p.requires_grad_(True)
        self.encoder = Encoder(self.adapter)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))
        self.rng = random.Random(cfg.seed)
        self.step = 0

    # -- checkpoints ---------------------------------------------------------------
    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path else self.out_dir / "checkpoint.pt"
        state = {
            "format": CKPT_FORMAT, "config": asdict(self.cfg), "step": self.step,
            "adapter": {n: t.clone() for n, t in self.adapter.state_dict().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "python_rng": self.rng.getstate(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "data_position": self.data.position,
        }
        tmp = path.with_name(path.name + ".part")
        torch.save(state, tmp)
        tmp.replace(path)  # a crash mid-write leaves the previous checkpoint whole
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("format") != CKPT_FORMAT:
            raise ValueError(f"{path} is not a Tome training checkpoint")
        saved = TrainConfig.from_dict(state["config"])
        if saved != self.cfg:
            diff = {k: (v, getattr(self.cfg, k)) for k, v in asdict(saved).items() if getattr(self.cfg, k) != v}
            raise ValueError(f"checkpoint config differs from this run's: {diff}")
        self.adapter.load_state_dict(state["adapter"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = state["step"]
        self.data.skip_to(state["data_position"])
        self._truncate_log(self.step)

    def _truncate_log(self, step: int) -> None:
        """Drop log lines of steps after the checkpoint: they will be run again."""
        if self.log_path.exists():
            lines = [ln for ln in self.log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
            self.log_path.write_text("".join(ln + "\n" for ln in lines))

    # -- training --------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        batch = next(self.data)
        self.opt.zero_grad(set_to_none=True)
        engine = ReservoirTBPTT(cfg.capacity, rng=self.rng)
        losses = chain_step(self.encoder, batch, engine, cfg.weights, rng=self.rng, autocast=self.autocast)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.clip))
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.adapter.invalidate_fingerprint()
        self.step += 1
        seconds = time.perf_counter() - t0
        tokens = self.data.tokens_per_batch
        total = sum(getattr(cfg.weights, k) * v for k, v in losses.items())
        return {"step": self.step, "loss": total, **losses, "lr": lr, "grad_norm": grad_norm, "tokens": tokens,
                "seconds": seconds, "tokens_per_s": tokens / seconds, "epoch": self.data.epoch,
                "peak_graphs": engine.peak_graphs}

    def run(self, stop_after: int | None = None, progress: bool = True) -> dict:
        """Train until cfg.steps (or until step ``stop_after``, to simulate an interruption)."""
        from tqdm import tqdm

        end = min(self.cfg.steps, stop_after) if stop_after is not None else self.cfg.steps
        last: dict = {}
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        seen_tokens, started = 0, time.perf_counter()
        with self.log_path.open("a", encoding="utf-8") as log:
            while self.step < end:
                last = self.train_step()
                seen_tokens += last["tokens"]
                last["elapsed_s"] = time.perf_counter() - started
                log.write(json.dumps(last) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{seen_tokens / last['elapsed_s']:.0f}")
                if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0:
                    self.save_checkpoint()
        bar.close()
        if last and (not self.cfg.ckpt_every or self.step % self.cfg.ckpt_every):
            self.save_checkpoint()
        return last

    def save_adapter(self, path: str | Path, last: dict | None = None, extra: dict | None = None) -> Path:
        """The trained adapter in bf16 with its training config (and last metrics) in the metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"training": json.dumps(asdict(self.cfg), sort_keys=True), "trained_steps": str(self.step),
                "last_metrics": json.dumps(last or {}, sort_keys=True), **(extra or {})}
        self.adapter.save(path, extra=meta, dtype=torch.bfloat16)
        return path


def train(cfg: TrainConfig, lm: LoadedModel, texts: Sequence[str], out_dir: str | Path,
          resume: str | Path | None = None, stop_after: int | None = None, adapter_out: str | Path | None = None,
          progress: bool = True, extra_meta: dict | None = None) -> TrainResult:
    """Train (or continue) a run; saves the final adapter to ``adapter_out`` when the schedule is done."""
    data = ChainBatches(texts, lm.tokenizer, cfg.segment_len, cfg.segments, cfg.batch_size, seed=cfg.seed)
    trainer = Trainer(cfg, lm, data, out_dir)
    if resume:
        trainer.load_checkpoint(resume)
    last = trainer.run(stop_after=stop_after, progress=progress)
    if adapter_out and trainer.step >= cfg.steps:
        trainer.save_adapter(adapter_out, last, extra_meta)
    return TrainResult(trainer.adapter, trainer.step, last)
