"""The training loop: batches of chains -> a chain step -> AdamW, with checkpoints that resume exactly.

Two recipes (``TrainConfig.recipe``): ``"distill"`` (issue 20, the default: a
memory-mode adapter, ``distill_step`` over ``DistillBatches`` with pass-key and
planted-fact probes and the l = short_len curriculum) and ``"uio"`` (the
paper's: a full-mode adapter, next-token objectives, ``chain_step`` over
``ChainBatches``).

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
from uio.train.data import ChainBatches, DistillBatches
from uio.train.distill import DistillConfig, distill_step, evaluate
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
    # -- the distillation recipe (issue 20); continuation and recall above belong to the "uio" recipe --
    recipe: str = "distill"  # "distill" (memory-mode adapter, self-distillation) or "uio" (the paper's)
    kl: float = 1.0  # KL(teacher || student) on the probe
    attention: float = 1.0  # per-layer attention-output matching
    answer_ce: float = 0.2  # cross-entropy on QA answers
    autoencode_len: int = 0  # auto-encoding span (0: l / 16)
    attention_queries: int = 64  # probe positions used by attention matching (0: all)
    init: str = "none"  # memory slots start from a training-free compressor: "kvzip", "strided" or "none"
    init_adapter: str = ""  # start from this adapter file's weights (same model, ratio, ranks, init; any l)
    continuation_len: int = 0  # probe tokens after each segment (0: l / 4)
    passkey: float = 0.1  # share of segments replaced by a pass-key document
    planted: float = 0.2  # share of segments given a planted fact
    short_len: int = 256  # curriculum: l for the first short_frac of the steps (no curriculum if >= l)
    short_frac: float = 0.25
    bf16_moments: int = 1  # keep AdamW's moments at bf16 precision: checkpoints half the size, still exact
    eval_every: int = 0  # held-out distillation losses every this many steps (0: never), logged as heldout_*
    eval_batches: int = 4

    @property
    def memory(self) -> MemoryConfig:
        return MemoryConfig(segment_len=self.segment_len, num_mem=self.segment_len // self.ratio,
                            enc_rank=self.enc_rank, enc_alpha=2 * self.enc_rank,
                            head_rank=self.head_rank, head_alpha=2 * self.head_rank)

    @property
    def distill(self) -> DistillConfig:
        return DistillConfig(kl=self.kl, attention=self.attention, autoencode=self.autoencode,
                             answer_ce=self.answer_ce, autoencode_len=self.autoencode_len,
                             attention_queries=self.attention_queries)

    @property
    def short_steps(self) -> int:
        return int(self.short_frac * self.steps) if 0 < self.short_len < self.segment_len else 0

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

    def __init__(self, cfg: TrainConfig, lm: LoadedModel, data: ChainBatches | DistillBatches, out_dir: str | Path,
                 autocast: torch.dtype | None = None, heldout: Sequence[str] = ()):
        if cfg.recipe not in ("distill", "uio"):
            raise ValueError(f"recipe must be 'distill' or 'uio', not {cfg.recipe!r}")
        self.cfg, self.lm, self.data = cfg, lm, data
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out_dir / "metrics.jsonl"
        if autocast is None and lm.device.type == "cuda":
            autocast = torch.bfloat16
        self.autocast = autocast
        torch.manual_seed(cfg.seed)
        self.adapter = UIOAdapter(lm, cfg.memory, mode="memory" if cfg.recipe == "distill" else "full",
                                  base=cfg.init)
        self.started_from: dict | None = None
        if cfg.init_adapter:
            if not Path(cfg.init_adapter).is_file():
                raise FileNotFoundError(f"--init-adapter {cfg.init_adapter}: no such file")
            source = self.adapter.adopt(cfg.init_adapter)
            # The file's own history travels on in the adapter this run saves (a chain of runs stays traceable).
            self.started_from = {"file": Path(cfg.init_adapter).name, "fingerprint": source.get("fingerprint", ""),
                                 "trained_steps": source.get("trained_steps", ""),
                                 "training": source.get("training", ""), "started_from": source.get("started_from", "")}
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
        self.eval_data = []  # fixed held-out batches at the final l (distill recipe)
        if heldout and cfg.recipe == "distill" and cfg.eval_every:
            stream = DistillBatches(heldout, lm.tokenizer, cfg.segment_len, cfg.segments, cfg.batch_size,
                                    seed=cfg.seed + 1, continuation_len=cfg.continuation_len, passkey=cfg.passkey,
                                    planted=cfg.planted)
            self.eval_data = [next(stream) for _ in range(cfg.eval_batches)]

    def evaluate(self) -> dict[str, float]:
        """Held-out distillation terms (``uio.train.distill.evaluate``); RNG states are left as they were."""
        cpu = torch.get_rng_state()
        out = evaluate(self.encoder, self.eval_data, self.cfg.distill, seed=self.cfg.seed)
        torch.set_rng_state(cpu)
        return out

    # -- checkpoints ---------------------------------------------------------------
    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path else self.out_dir / "checkpoint.pt"
        state = {
            "format": CKPT_FORMAT, "config": asdict(self.cfg), "step": self.step,
            "adapter": {n: t.clone() for n, t in self.adapter.state_dict().items()},
            "optimizer": self._optimizer_state(), "scheduler": self.sched.state_dict(),
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
        opt_state = state["optimizer"]
        for st in opt_state["state"].values():  # moments saved in bf16 were kept at bf16 precision: exact
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    st[key] = st[key].float()
        self.opt.load_state_dict(opt_state)
        self.sched.load_state_dict(state["scheduler"])
        self.rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = state["step"]
        self.data.skip_to(state["data_position"])
        self._truncate_log(self.step)

    def _optimizer_state(self) -> dict:
        state = self.opt.state_dict()
        if not self.cfg.bf16_moments:
            return state
        out = {"param_groups": state["param_groups"], "state": {}}
        for i, st in state["state"].items():
            out["state"][i] = {k: (v.to(torch.bfloat16) if k in ("exp_avg", "exp_avg_sq") else v)
                               for k, v in st.items()}
        return out

    def _round_moments(self) -> None:
        """AdamW's moments to bf16 precision after each step, so a bf16 checkpoint of them loses nothing."""
        with torch.no_grad():
            for st in self.opt.state.values():
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in st:
                        st[key].copy_(st[key].to(torch.bfloat16))

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
        if cfg.recipe == "distill":
            losses = distill_step(self.encoder, batch, engine, cfg.distill, rng=self.rng, autocast=self.autocast)
            total = losses.pop("total")
            tokens, seg_len = batch.tokens, batch.segments.shape[-1]
        else:
            losses = chain_step(self.encoder, batch, engine, cfg.weights, rng=self.rng, autocast=self.autocast)
            total = sum(getattr(cfg.weights, k) * v for k, v in losses.items())
            tokens, seg_len = self.data.tokens_per_batch, cfg.segment_len
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.clip))
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        if cfg.bf16_moments:
            self._round_moments()
        self.sched.step()
        self.adapter.invalidate_fingerprint()
        self.step += 1
        seconds = time.perf_counter() - t0
        return {"step": self.step, "loss": total, **losses, "lr": lr, "grad_norm": grad_norm, "tokens": tokens,
                "segment_len": seg_len, "seconds": seconds, "tokens_per_s": tokens / seconds,
                "epoch": self.data.epoch, "peak_graphs": engine.peak_graphs}

    def run(self, stop_after: int | None = None, progress: bool = True) -> dict:
        """Train until cfg.steps (or until step ``stop_after``, to simulate an interruption)."""
        from tqdm import tqdm

        end = min(self.cfg.steps, stop_after) if stop_after is not None else self.cfg.steps
        last: dict = {}
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        seen_tokens, started = 0, time.perf_counter()
        with self.log_path.open("a", encoding="utf-8") as log:
            if self.eval_data and self.step == 0:
                log.write(json.dumps({"step": 0, **{f"heldout_{k}": v for k, v in self.evaluate().items()}}) + "\n")
            while self.step < end:
                last = self.train_step()
                if self.eval_data and self.step % self.cfg.eval_every == 0:
                    last.update({f"heldout_{k}": v for k, v in self.evaluate().items()})
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
        if self.started_from:
            meta["started_from"] = json.dumps(self.started_from, sort_keys=True)
        self.adapter.save(path, extra=meta, dtype=torch.bfloat16)
        return path


def make_data(cfg: TrainConfig, texts: Sequence[str], tokenizer) -> ChainBatches | DistillBatches:
    if cfg.recipe == "uio":
        return ChainBatches(texts, tokenizer, cfg.segment_len, cfg.segments, cfg.batch_size, seed=cfg.seed)
    return DistillBatches(texts, tokenizer, cfg.segment_len, cfg.segments, cfg.batch_size, seed=cfg.seed,
                          continuation_len=cfg.continuation_len, passkey=cfg.passkey, planted=cfg.planted,
                          short_len=cfg.short_len, short_steps=cfg.short_steps)


def train(cfg: TrainConfig, lm: LoadedModel, texts: Sequence[str], out_dir: str | Path,
          resume: str | Path | None = None, stop_after: int | None = None, adapter_out: str | Path | None = None,
          progress: bool = True, extra_meta: dict | None = None, heldout: Sequence[str] = ()) -> TrainResult:
    """Train (or continue) a run; saves the final adapter to ``adapter_out`` when the schedule is done."""
    data = make_data(cfg, texts, lm.tokenizer)
    trainer = Trainer(cfg, lm, data, out_dir, heldout=heldout)
    if resume:
        trainer.load_checkpoint(resume)
    last = trainer.run(stop_after=stop_after, progress=progress)
    if adapter_out and trainer.step >= cfg.steps:
        trainer.save_adapter(adapter_out, last, extra_meta)
    return TrainResult(trainer.adapter, trainer.step, last)
