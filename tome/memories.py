"""A document's memories: made from its segments chunk by chunk (resumable), stored, and loaded for questions."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Sequence

from storage import DocumentInfo, MemoryFiles, MemorySetInfo, Store
from storage.files import sha256_file
from tome.models import Models
from tome.timing import Timer, maybe
from uio.lru import ByteLRU

log = logging.getLogger("tome")

Progress = Callable[[float, str], None]


class ModelSwitched(RuntimeError):
    """The base model was switched while a book was being compressed: its memories must start again."""


class Memories:
    """Makes, stores and loads memory files; keeps recently used ones in a byte-bounded LRU."""

    def __init__(self, models: Models, store: Store, files: MemoryFiles, cache_mb: int):
        self.models, self.store, self.files = models, store, files
        # file sha256 -> Memory, bounded in bytes: one big book must not push RAM over the edge
        self.cache = ByteLRU(cache_mb << 20, size=lambda m: m.nbytes)
        self._encoders: dict[tuple, object] = {}  # (adapter fingerprint, kind) -> int8 encoder / Ray pool

    def clear(self) -> None:
        """Forget loaded memories and encoders (after a model switch)."""
        self.cache.clear()
        self._encoders.clear()

    def compress(self, doc: DocumentInfo, segments, name: str, report: Progress, compressor=None,
                 chunk: int | None = None, step: Callable[..., None] | None = None) -> MemorySetInfo:
        """Compress all segments chunk by chunk (each chunk saved), then write the whole memory file.

        It runs in a thread of its own that ends with it (``uio/torch_thread.py``: a long-lived thread that
        ran torch would slow every later prefill), unless this thread holds the model lock, which that thread
        would wait for.

        ``report`` gets this stage's fraction (0..1); ``step`` the number of segments done, after each
        segment, while waiting for the model and (with ``force=True``) after each saved chunk (a worker's
        heartbeat: it may raise to stop the work).
        The model lock is taken per chunk of ``chunk`` segments (default ``Config.chunk_segments``), never
        for the whole book, so a question asked meanwhile waits for one chunk at most (per segment for a
        compressor whose segments share a budget: its chunks round up to whole groups). A chunk saved by an
        earlier, interrupted run is read back instead of made again when it holds the same segments.
        """
        from uio.torch_thread import run_in_own_thread

        args = (doc, segments, name, report, compressor, chunk, step)
        if self.models.lock.owned():
            return self._compress(*args)
        return run_in_own_thread(self._compress, *args, name="tome-compress-job")

    def _compress(self, doc: DocumentInfo, segments, name: str, report: Progress, compressor=None,
                  chunk: int | None = None, step: Callable[..., None] | None = None) -> MemorySetInfo:
        from uio.compress import storage_dtype
        from uio.memory import STORAGES, Memory

        # How the final file stores keys and values (Config.memory_dtype): a storage detail, not part of the
        # memories' identity; Memory.load reads both, so a library that switches keeps the files it has.
        # Checked before the work, not after minutes of it.
        storage = self.models.config.memory_dtype
        if storage not in STORAGES:
            raise ValueError(f"memory_dtype must be one of {STORAGES}, not {storage!r}")
        compressor = compressor or self.models.compressor()
        lm = self.models.lm
        dtype = storage_dtype(lm)  # 16-bit files whichever encoder ran (Ray, int8: model dtype)
        fp, ratio = compressor.identity(lm), compressor.ratio
        encoder = self.encoder(compressor)
        n, size = len(segments), chunk or self.models.config.chunk_segments
        # Segments that split one budget (ScoringCompressor.share) are compressed in one call: chunks hold
        # whole groups, so the memories do not depend on the chunk size (background chunks included).
        group = getattr(compressor, "share", 1)
        size = -(-size // group) * group
        tick = step or (lambda done, force=False: None)
        parts = []
        for c, start in enumerate(range(0, n, size)):
            part = segments[start:start + size]
            saved = self._saved_chunk(self.files.root / self.files.part(doc.sha256, fp, ratio, c), fp, part)
            if saved is not None:
                parts.append(saved)
                continue

            def one(done: int, _total: int, start: int = start) -> None:
                report((start + done) / n, f"{name}: memories {start + done}/{n} segments")
                tick(start + done)

            @contextmanager
            def held(start: int = start):
                with self._model_lock(lambda: tick(start)):
                    if self.models.loaded is not lm:  # the model was switched: these memories would mix two models
                        raise ModelSwitched("the model was switched during compression; it starts again")
                    yield

            args = dict(segment_ids=[s.index for s in part], token_spans=[(s.token_start, s.token_end) for s in part],
                        progress=one)
            if group > 1:  # the lock per segment, not per group: a question waits one segment's compression
                mem = encoder.compress([s.token_ids for s in part], hold=held, **args)
            else:
                with held():
                    mem = encoder.compress([s.token_ids for s in part], **args)
            mem.keys, mem.values = mem.keys.to(dtype), mem.values.to(dtype)
            mem.save(self.files.path(self.files.part(doc.sha256, fp, ratio, c)))
            parts.append(mem)
            tick(min(start + size, n), force=True)
        rel = self.files.final(doc.sha256, fp, ratio)
        final = self.files.path(rel)
        # Chunks stay 16-bit (an interrupted run resumes from them exactly); the whole file is quantised once.
        Memory.concat(parts).save(final, storage=storage)
        report(1.0, f"{name}: memories {n}/{n} segments")
        return MemorySetInfo(doc.id, fp, ratio, rel, final.stat().st_size, sha256_file(final),
                             compressor.name, compressor.params() | {"version": compressor.version,
                                                                     "storage": storage})

    @staticmethod
    def _saved_chunk(path, fp: str, part):
        """A chunk saved before, if it is readable and holds exactly these segments (else None: make it again;
        a chunk written with another chunk size has other segments)."""
        from uio.memory import Memory

        if not path.is_file():
            return None
        try:
            mem = Memory.load(path, expect_fingerprint=fp)
        except Exception as e:  # a damaged chunk is simply made again
            log.warning("chunk %s unreadable (%s); recompressing", path.name, e)
            return None
        if list(mem.segment_ids) != [s.index for s in part]:
            log.info("chunk %s holds other segments (another chunk size); recompressing", path.name)
            return None
        return mem

    @contextmanager
    def _model_lock(self, waiting: Callable[[], None], every_s: float = 10.0):
        """The model lock, calling ``waiting`` every ``every_s`` while a question holds it (a worker's
        heartbeat: its job must not look dead while it only waits its turn)."""
        lock = self.models.lock
        lock.acquire(waiting=waiting, every_s=every_s)
        try:
            yield
        finally:
            lock.release()

    def encoder(self, compressor):
        """What compresses segments: the compressor on the loaded model, or for the UIO encoder its int8
        copy or a pool of Ray actors when configured.

        All have ``compress(token lists, segment_ids, token_spans, progress) -> Memory``.
        """
        c = self.models.config
        if compressor.name != "uio":
            if c.ray_address or c.int8_ingest:
                log.warning("Ray and int8 ingestion serve the uio compressor only; %s runs here on the model",
                            compressor.name)
            return _Bound(compressor, self.models.lm)
        adapter = compressor.adapter
        if c.ray_address:
            key = (adapter.fingerprint, "ray")
            if key not in self._encoders:
                from uio.ray_pool import RayPool

                m = self.models
                self._encoders[key] = RayPool.start(adapter, address=c.ray_address, actors=c.ray_actors,
                                                    batch_size=c.compress_batch, int8=c.int8_ingest,
                                                    model=m.lm if m.lm_given else c.model,
                                                    models_dir=c.models_path, dtype=c.dtype)
            return self._encoders[key]
        if c.int8_ingest and self.models.lm.device.type == "cpu":
            key = (adapter.fingerprint, "int8")
            if key not in self._encoders:
                from uio.quant import int8_encoder

                self._encoders[key] = int8_encoder(adapter, batch_size=c.compress_batch)
            return self._encoders[key]
        return _Bound(compressor, self.models.lm)

    def collect(self, ratios: Sequence[int], dry_run: bool = False) -> list[MemorySetInfo]:
        """Memory sets that the configured compressor at none of ``ratios`` makes (another method, model or
        adapter): listed, and unless ``dry_run`` removed (row, file, cached copy)."""
        lm = self.models.lm
        keep = {self.models.compressor(r).identity(lm) for r in ratios}
        stale = [m for m in self.store.memory_sets() if m.fingerprint not in keep]
        if not dry_run:
            for m in stale:
                self.store.delete_memory_set(m.document_id, m.fingerprint)
                (self.files.root / m.path).unlink(missing_ok=True)
                self.cache.pop(m.sha256)
        return stale

    def load(self, doc: DocumentInfo, ratio: int | None = None, progress: Progress | None = None,
             timer: Timer | None = None, compressor: str | None = None):
        """A document's memories by ``compressor`` (default: the config's) at ``ratio``, checksum-verified,
        kept in the LRU.

        Memories missing for this compressor (another ratio, another method, another model) are made now
        from the stored segments, with progress, and recorded; memories of another compressor are never
        used in their place. The file is memory-mapped and loaded straight onto the model's device.
        """
        from uio.memory import Memory
        from uio.torch_thread import run_on_torch

        made_by = self.models.compressor(ratio, compressor)
        fp = made_by.identity(self.models.lm)
        with maybe(timer, "lookup"):
            ms = self.store.memory_set(doc.id, fp)
        if ms is None:
            from tome.queue import check_not_queued

            check_not_queued(self.store, doc, made_by)  # the worker is making them: never twice, never blocking
            ms = self._compress_stored(doc, made_by, progress)
        mem = self.cache.get(ms.sha256)
        if mem is not None:
            return mem
        with maybe(timer, "read"):
            mem = run_on_torch(Memory.load, self.files.verify(ms.path, ms.sha256), expect_fingerprint=fp,
                               device=str(self.models.lm.device))
        self.cache.put(ms.sha256, mem)
        return mem

    def stored_segments(self, doc: DocumentInfo, pages=None) -> list:
        """A document's segments with their tokens, the same in every process (so chunks saved before a
        restart match the ones made after it).

        From ``pages`` (the kept upload read again) the tokens are exactly stage 1's, when its segments
        come out as stored; else they are made again from the stored text (a few tokens may differ where
        the text was cut and stripped).
        """
        from ingest import Segment, split_segments

        limit = self.models.config.segment_len
        tok = self.models.lm.tokenizer
        rows = self.store.segments(doc.id)
        if pages:
            again = split_segments(pages, tok, limit)
            if [(s.index, s.token_start, s.token_end) for s in again] == [(r.index, r.token_start, r.token_end)
                                                                          for r in rows]:
                return again
            log.info("segments of %r read again differ from the stored ones; using the stored text", doc.title)
        return [Segment(r.index, r.text, r.page_start, r.page_end, r.token_start, r.token_end,
                        tuple(tok(r.text, add_special_tokens=False)["input_ids"][:limit]) or (tok.eos_token_id,))
                for r in rows]

    def _compress_stored(self, doc: DocumentInfo, compressor, progress: Progress | None) -> MemorySetInfo:
        """Memories of another compressor or ratio than the queue's, made on demand for a question."""
        log.info("making %dx %s memories of %r", compressor.ratio, compressor.name, doc.title)
        ms = self.compress(doc, self.stored_segments(doc), doc.title, progress or (lambda f, m: None), compressor)
        self.store.finish_document(doc.id, ms)
        self.files.remove_parts(doc.sha256, ms.fingerprint, ms.ratio)
        return ms


class _Bound:
    """A compressor bound to the loaded model, with the encoders' ``compress`` signature."""

    def __init__(self, compressor, lm):
        self.compressor, self.lm = compressor, lm

    def compress(self, token_lists, segment_ids=None, token_spans=None, progress=None, **kw):
        return self.compressor.compress(self.lm, token_lists, segment_ids, token_spans, progress, **kw)
