"""Stage 2 of ingestion: the compression queue and its worker.

A book is ``ready`` (askable uncompressed) once stage 1 has stored its text,
segments, passages and vectors (``tome.library``); its memories are made
afterwards, one book at a time, from a persisted queue (the
``compression_jobs`` table, ``storage.jobs``). ``serve`` runs the worker in a
thread of the service (it survives page reloads); the CLI runs it inline.
Each chunk of ``Config.background_chunk_segments`` segments is compressed
under the model lock and saved, so a question waits one chunk at most and a
restart (or ``kill -9``) resumes from the last saved chunk.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Callable, Iterable, Sequence

from storage import DocumentInfo, JobInfo, MemoryFiles, NotFound, Store
from storage.jobs import ACTIVE, CANCELLED, DONE, FAILED, QUEUED, RUNNING, now
from tome.memories import Memories, ModelSwitched
from tome.models import Models

log = logging.getLogger("tome")

Progress = Callable[[float, str], None]


class MemoriesPending(ValueError):
    """Compressed mode on a book whose memories the queue has not finished (or failed to make).

    ``progress`` says how far they are ("memories of X are 12/40 segments done (ETA 3 min)"); the UI and
    the CLI answer uncompressed with it as a notice, the API raises it so a question never makes (and
    waits for) the memories the worker is making.
    """

    def __init__(self, progress: str):
        super().__init__(f"{progress}; ask in uncompressed mode, or wait for them")
        self.progress = progress


class _Lost(Exception):
    """The running job is no longer this worker's (cancelled, its book deleted, taken as stale)."""


# -- progress and ETA -------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobProgress:
    job: JobInfo
    rate: float | None  # segments per second, measured (None: nothing measured yet)
    eta_s: float | None  # until this job is done, counting the jobs ahead of it
    ahead: int  # active jobs before it in the queue


def _rate(job: JobInfo) -> float | None:
    """Segments per second of this job's current (running) or last (done) run."""
    if job.started_at is None:
        return None
    done = (job.segments_total if job.status == DONE else job.segments_done) - job.done_at_claim
    secs = ((job.updated_at if job.status == DONE else now()) - job.started_at).total_seconds()
    return done / secs if done > 0 and secs > 0 else None


def measured_rate(jobs: Sequence[JobInfo]) -> float | None:
    """The running job's rate, else the most recent finished job's."""
    for j in [j for j in jobs if j.status == RUNNING] + sorted((j for j in jobs if j.status == DONE),
                                                               key=lambda j: j.updated_at, reverse=True):
        r = _rate(j)
        if r:
            return r
    return None


def estimate(jobs: Sequence[JobInfo]) -> dict[int, JobProgress]:
    """Per job id: rate, ETA and place in the queue. Active jobs are done in id order, one at a time."""
    rate = measured_rate(jobs)
    out, remaining, ahead = {}, 0, 0
    for j in sorted(jobs, key=lambda j: (j.status != RUNNING, j.id)):
        if j.status in ACTIVE:
            remaining += j.segments_total - j.segments_done
            out[j.id] = JobProgress(j, rate, remaining / rate if rate else None, ahead)
            ahead += 1
        else:
            out[j.id] = JobProgress(j, rate, None, 0)
    return out


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA unknown"
    if seconds < 90:
        return f"ETA {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"ETA {round(seconds / 60)} min"
    return f"ETA {seconds / 3600:.1f} h"


def job_status(p: JobProgress) -> str:
    """A book's stage-2 state in plain text (no emoji: it must render with any font)."""
    j = p.job
    n = f"{j.segments_done}/{j.segments_total}"
    if j.status == RUNNING:
        return f"compressing {n} ({fmt_eta(p.eta_s)})"
    if j.status == QUEUED:
        return f"queued {n}" + (f", {p.ahead} ahead" if p.ahead else "") + f" ({fmt_eta(p.eta_s)})"
    if j.status == FAILED:
        return f"failed: {j.error or 'unknown error'}"
    if j.status == CANCELLED:
        return "cancelling"
    return "ready"


def check_not_queued(store: Store, doc: DocumentInfo, compressor) -> None:
    """Raise ``MemoriesPending`` when the queue has (or failed) the job of these memories."""
    job = store.job_for(doc.id, compressor.name, compressor.ratio)
    if job is None or job.status in (DONE, CANCELLED):
        return
    if job.status == FAILED:
        raise MemoriesPending(f"making the memories of {doc.title} failed ({job.error}); re-ingest it to retry")
    p = estimate(store.jobs(ACTIVE + (DONE,)))[job.id] if job.active else None
    raise MemoriesPending(f"memories of {doc.title} are {job.segments_done}/{job.segments_total} segments done "
                          f"({fmt_eta(p.eta_s if p else None)})")


# -- the queue and its worker -----------------------------------------------------------------------
class Queue:
    """Enqueue, watch and cancel stage 2; run it inline (``wait_for``, ``drain``) or in a thread (``start``)."""

    def __init__(self, models: Models, store: Store, files: MemoryFiles, memories: Memories):
        self.models, self.store, self.files, self.memories = models, store, files, memories
        self.host = socket.gethostname()
        # host:pid lets a restarted process on this host see that the claimer is gone; the tag tells two
        # workers of one process (tests, an inline wait beside the thread) apart.
        self.worker = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pages_of: Callable[[DocumentInfo], list | None] | None = None  # set by Library: the kept upload's pages
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()

    @property
    def config(self):
        return self.models.config

    # -- the rows --
    def enqueue(self, doc: DocumentInfo) -> JobInfo:
        """Queue the memories of the configured compressor and ratio for ``doc`` (stage 2)."""
        job = self.store.enqueue_job(doc.id, self.models.compressor_name(), self.config.ratio,
                                     self.store.count_segments([doc.id]))
        self._wake.set()
        return job

    def job_of(self, doc_id: int) -> JobInfo | None:
        """The job of the configured compressor and ratio for this document."""
        return self.store.job_for(doc_id, self.models.compressor_name(), self.config.ratio)

    def progress(self, doc_ids: Iterable[int] | None = None) -> list[JobProgress]:
        """Progress of the jobs (of ``doc_ids``), in queue order; finished ones included."""
        every = estimate(self.store.jobs())
        ids = set(doc_ids) if doc_ids is not None else None
        return [p for p in every.values() if ids is None or p.job.document_id in ids]

    def cancel(self, doc_id: int) -> bool:
        """Cancel the document's active job: its partial chunk files and the job go; a running worker stops
        at its next segment. False when there was nothing to cancel."""
        job = next((j for j in self.store.jobs(ACTIVE, [doc_id])), None)
        if job is None:
            return False
        self.store.cancel_job(job.id)
        self._remove_parts(job)
        return True

    def recover(self) -> list[JobInfo]:
        """Start-up: jobs of dead workers (this host's gone processes, or silent for ``compress_stale_s``)
        are queued again (they resume from their chunks); cancelled ones finish cancelling."""
        dead = self.store.release_stale_jobs(now() - timedelta(seconds=self.config.compress_stale_s),
                                             self.config.compress_attempts, host=self.host)
        for j in dead:
            if j.status == CANCELLED:
                self._remove_parts(j)
            else:
                log.info("compression of %r (%d/%d segments) was interrupted; queued again",
                         j.title, j.segments_done, j.segments_total)
        return [j for j in dead if j.status == RUNNING]

    def _remove_parts(self, job: JobInfo) -> None:
        try:
            doc = self.store.get_document(job.document_id)
        except NotFound:
            return  # deleted with its files
        fp = self.models.compressor(job.ratio, job.compressor).identity(self.models.lm)
        self.files.remove_parts(doc.sha256, fp, job.ratio)

    # -- running jobs --
    def run_next(self, progress: Progress | None = None, document_id: int | None = None) -> JobInfo | None:
        """Claim the oldest queued job (of ``document_id``) and run it here; the job as it ended, or None."""
        self.store.release_stale_jobs(now() - timedelta(seconds=self.config.compress_stale_s),
                                      self.config.compress_attempts)
        job = self.store.claim_job(self.worker, document_id)
        if job is None:
            return None
        self._run(job, progress or (lambda f, m: None))
        return self.store.job(job.id) or replace(job, status=CANCELLED)  # gone: cancelled, or its book deleted

    def wait_for(self, doc_id: int, progress: Progress | None = None, poll_s: float = 1.0) -> JobInfo | None:
        """Until the document's job is over: run it here if it is queued, else watch the worker that has it.
        The job as it ended (None: no job, or it was cancelled)."""
        report = progress or (lambda f, m: None)
        while True:
            job = self.job_of(doc_id)
            if job is None or not job.active:
                return job
            if job.status == QUEUED and self.run_next(report, doc_id) is not None:
                continue
            report(job.segments_done / max(1, job.segments_total),
                   f"{job.title}: memories {job.segments_done}/{job.segments_total} segments (another worker)")
            time.sleep(poll_s)

    def drain(self, progress: Progress | None = None) -> list[JobInfo]:
        """Run queued jobs here until none is left (the CLI's worker)."""
        out = []
        while (job := self.run_next(progress)) is not None:
            out.append(job)
        return out

    def _run(self, job: JobInfo, report: Progress) -> None:
        try:
            doc = self.store.get_document(job.document_id)
        except NotFound:
            return  # deleted meanwhile: the job went with it
        compressor = self.models.compressor(job.ratio, job.compressor)
        fp = compressor.identity(self.models.lm)
        beat = _Heartbeat(self.store, job, self.worker)
        try:
            if self.store.memory_set(doc.id, fp) is None:
                log.info("compressing %r: %d/%d segments done, %s %dx", doc.title, job.segments_done,
                         job.segments_total, job.compressor, job.ratio)
                ms = self.memories.compress(doc, self._segments(doc), doc.title, report, compressor,
                                            chunk=self.config.background_chunk_segments, step=beat)
            else:  # made already (a crash between recording them and marking the job done)
                ms = self.store.memory_set(doc.id, fp)
            if not self.store.finish_job(job.id, self.worker, ms):
                raise _Lost()
            self.files.remove_parts(doc.sha256, fp, job.ratio)
            log.info("memories of %r done", doc.title)
        except _Lost:
            self._lost(job, doc, fp)
        except ModelSwitched:  # memories of the old model are no use: start again with the new one
            self.files.remove_parts(doc.sha256, fp, job.ratio)
            self.store.requeue_job(job.id, self.worker)
        except Exception as e:  # noqa: BLE001 - any failure is the job's, shown in the library
            log.exception("compression of %r failed", doc.title)
            self.store.fail_job(job.id, self.worker, f"{type(e).__name__}: {e}")
            self.files.remove_parts(doc.sha256, fp, job.ratio)

    def _segments(self, doc: DocumentInfo) -> list:
        """Stage 1's segments with their exact tokens (the upload read again), else from the stored text."""
        try:
            pages = self.pages_of(doc) if self.pages_of else None
        except Exception as e:  # noqa: BLE001 - an encrypted or vanished upload: the stored text serves
            log.info("could not read %r again (%s); tokens from the stored text", doc.title, e)
            pages = None
        return self.memories.stored_segments(doc, pages)

    def _lost(self, job: JobInfo, doc: DocumentInfo, fp: str) -> None:
        """The job was taken from us: clean up if it was cancelled or its book deleted; if another worker
        took it (we looked dead), leave its chunks and the final file alone."""
        now_ = self.store.job(job.id)
        if now_ is not None and now_.status != CANCELLED:
            return
        if now_ is not None:
            self.store.delete_job(job.id)
        self.files.remove_parts(doc.sha256, fp, job.ratio)
        if self.store.memory_set(doc.id, fp) is None:
            (self.files.root / self.files.final(doc.sha256, fp, job.ratio)).unlink(missing_ok=True)
        log.info("compression of %r cancelled", doc.title)

    # -- the background thread (serve) --
    def start(self) -> None:
        """Run the worker in a daemon thread until ``stop``: it outlives page reloads, not the process."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tome-compress", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.run_next()
            except Exception:  # noqa: BLE001 - the database was away, say: try again later
                log.exception("compression worker: could not take a job")
                job = None
            if job is None:
                self._wake.wait(self.config.compress_poll_s)
                self._wake.clear()


class _Heartbeat:
    """The worker's ``step``: records segments done (after each saved chunk, else at most once a second)
    and stops a job that is no longer ours (raises ``_Lost``)."""

    def __init__(self, store: Store, job: JobInfo, worker: str, every_s: float = 1.0):
        self.store, self.job, self.worker, self.every_s = store, job, worker, every_s
        self.last = 0.0

    def __call__(self, done: int, force: bool = False) -> None:
        t = time.monotonic()
        if t - self.last < self.every_s and not force:  # every saved chunk is recorded (and checked)
            return
        self.last = t
        if not self.store.heartbeat_job(self.job.id, self.worker, done):
            raise _Lost()
