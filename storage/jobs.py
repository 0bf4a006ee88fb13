"""The compression queue's rows: enqueue, claim, heartbeat, finish, fail, cancel, release the dead.

Claims are safe with several workers on one database. PostgreSQL: the oldest
``queued`` row is picked by a sub-select ``FOR UPDATE SKIP LOCKED`` inside the
claiming ``UPDATE``, so two workers claiming at once lock different rows (or one
finds none). SQLite: one statement, and SQLite runs one writer at a time, so the
conditional ``UPDATE ... WHERE status = 'queued'`` cannot take a row twice.

Every later write of a running job names its worker (``WHERE worker = :me AND
status = 'running'``): a worker whose job was cancelled, deleted with its
document, or released as stale and taken by another learns it at its next
heartbeat (it gets False) and stops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from sqlalchemy import and_, case, delete, or_, select, update
from sqlalchemy.engine import Connection

from storage.schema import CompressionJob, Document, MemorySet

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)  # a worker has yet to finish these; their chunk files are kept


def now() -> datetime:
    return datetime.now(timezone.utc)


def utc(t: datetime | None) -> datetime | None:
    """SQLite gives datetimes back without a zone; every stored time is UTC."""
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t


@dataclass(frozen=True)
class JobInfo:
    id: int
    document_id: int
    title: str
    compressor: str
    ratio: int
    status: str
    segments_done: int
    segments_total: int
    done_at_claim: int
    attempts: int
    worker: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


_COLUMNS = (CompressionJob.id, CompressionJob.document_id, Document.title, CompressionJob.compressor,
            CompressionJob.ratio, CompressionJob.status, CompressionJob.segments_done, CompressionJob.segments_total,
            CompressionJob.done_at_claim, CompressionJob.attempts, CompressionJob.worker, CompressionJob.error,
            CompressionJob.created_at, CompressionJob.started_at, CompressionJob.updated_at)


def _info(row) -> JobInfo:
    r = list(row)
    r[12], r[13], r[14] = utc(r[12]), utc(r[13]), utc(r[14])
    return JobInfo(*r)


def _select():
    return select(*_COLUMNS).join(Document, Document.id == CompressionJob.document_id)


def claim(conn: Connection, worker: str, document_id: int | None = None) -> int | None:
    """Take the oldest queued job (of ``document_id`` if given) for ``worker``; its id, or None.

    Runs in the caller's transaction: on PostgreSQL the row stays locked until it commits, and a
    second claim meanwhile skips it (tests hold a transaction open to show it).
    """
    pick = select(CompressionJob.id).where(CompressionJob.status == QUEUED)
    if document_id is not None:
        pick = pick.where(CompressionJob.document_id == document_id)
    # FOR UPDATE SKIP LOCKED on PostgreSQL; SQLAlchemy renders nothing for SQLite (one writer at a time there).
    pick = pick.order_by(CompressionJob.id).limit(1).with_for_update(skip_locked=True).scalar_subquery()
    t = now()
    stmt = (update(CompressionJob)
            .where(CompressionJob.id == pick, CompressionJob.status == QUEUED)
            .values(status=RUNNING, worker=worker, started_at=t, updated_at=t, error=None,
                    attempts=CompressionJob.attempts + 1, done_at_claim=CompressionJob.segments_done)
            .returning(CompressionJob.id)
            .execution_options(synchronize_session=False))
    return conn.execute(stmt).scalar()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def dead_here(worker: str | None, host: str, alive: Callable[[int], bool] = _pid_alive) -> bool:
    """Whether ``worker`` ("host:pid:tag") ran on ``host`` in a process that is gone."""
    parts = (worker or "").split(":")
    return len(parts) >= 2 and parts[0] == host and parts[1].isdigit() and not alive(int(parts[1]))


class JobStore:
    """The queue's reads and writes; mixed into ``storage.Store`` (uses its engine and sessions)."""

    engine = None  # set by Store
    _session = None

    def enqueue_job(self, doc_id: int, compressor: str, ratio: int, total: int) -> JobInfo:
        """Queue stage 2 of a document; a job of the same document, compressor and ratio is reused:
        left alone while active (its saved chunks stay valid), else queued again from the start."""
        with self._session.begin() as s:
            job = s.scalar(select(CompressionJob).where(CompressionJob.document_id == doc_id,
                                                        CompressionJob.compressor == compressor,
                                                        CompressionJob.ratio == ratio))
            if job is None:
                s.add(CompressionJob(document_id=doc_id, compressor=compressor, ratio=ratio, status=QUEUED,
                                     segments_done=0, segments_total=total, done_at_claim=0, attempts=0))
            elif job.status not in ACTIVE:
                job.status, job.segments_done, job.segments_total, job.done_at_claim = QUEUED, 0, total, 0
                job.attempts, job.worker, job.error, job.started_at, job.updated_at = 0, None, None, None, now()
        return self.job_for(doc_id, compressor, ratio)

    def claim_job(self, worker: str, document_id: int | None = None) -> JobInfo | None:
        with self.engine.begin() as conn:
            job_id = claim(conn, worker, document_id)
        return self.job(job_id) if job_id is not None else None

    def job(self, job_id: int) -> JobInfo | None:
        with self._session() as s:
            row = s.execute(_select().where(CompressionJob.id == job_id)).first()
            return _info(row) if row else None

    def job_for(self, doc_id: int, compressor: str, ratio: int) -> JobInfo | None:
        with self._session() as s:
            row = s.execute(_select().where(CompressionJob.document_id == doc_id,
                                            CompressionJob.compressor == compressor,
                                            CompressionJob.ratio == ratio)).first()
            return _info(row) if row else None

    def jobs(self, statuses: Iterable[str] | None = None, doc_ids: Iterable[int] | None = None) -> list[JobInfo]:
        """Jobs in queue order (oldest first), optionally only these statuses / documents."""
        q = _select().order_by(CompressionJob.id)
        if statuses is not None:
            q = q.where(CompressionJob.status.in_(list(statuses)))
        if doc_ids is not None:
            q = q.where(CompressionJob.document_id.in_(list(doc_ids)))
        with self._session() as s:
            return [_info(r) for r in s.execute(q)]

    def _mine(self, job_id: int, worker: str):
        return and_(CompressionJob.id == job_id, CompressionJob.worker == worker, CompressionJob.status == RUNNING)

    def heartbeat_job(self, job_id: int, worker: str, done: int) -> bool:
        """Record progress; False when the job is no longer this worker's to run (cancelled, deleted, taken)."""
        with self.engine.begin() as conn:
            n = conn.execute(update(CompressionJob).where(self._mine(job_id, worker))
                             .values(segments_done=done, updated_at=now())).rowcount
        return n == 1

    def finish_job(self, job_id: int, worker: str, memory) -> bool:
        """Record the whole, checksummed memory file (``MemorySetInfo``) and mark the job done, atomically;
        False (nothing written) when the job is no longer this worker's."""
        with self._session.begin() as s:
            job = s.scalar(select(CompressionJob).where(self._mine(job_id, worker)).with_for_update())
            if job is None:
                return False
            s.execute(delete(MemorySet).where(MemorySet.document_id == job.document_id,
                                              MemorySet.fingerprint == memory.fingerprint))
            s.add(MemorySet(document_id=job.document_id, fingerprint=memory.fingerprint, ratio=memory.ratio,
                            path=memory.path, bytes=memory.bytes, sha256=memory.sha256,
                            compressor=memory.compressor, params=memory.params))
            job.status, job.segments_done, job.updated_at, job.error = DONE, job.segments_total, now(), None
        return True

    def fail_job(self, job_id: int, worker: str, error: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(update(CompressionJob).where(self._mine(job_id, worker))
                                .values(status=FAILED, error=error[:2000], updated_at=now())).rowcount == 1

    def requeue_job(self, job_id: int, worker: str) -> bool:
        """Give a running job back to the queue, from the start (its chunks were made by another model)."""
        with self.engine.begin() as conn:
            return conn.execute(update(CompressionJob).where(self._mine(job_id, worker))
                                .values(status=QUEUED, worker=None, segments_done=0, updated_at=now())).rowcount == 1

    def cancel_job(self, job_id: int) -> JobInfo | None:
        """Cancel: a running job is marked ``cancelled`` (its worker stops at its next heartbeat and deletes
        the row); any other is deleted now. Returns the job as it was, or None."""
        job = self.job(job_id)
        if job is None:
            return None
        with self.engine.begin() as conn:
            if job.status == RUNNING:
                conn.execute(update(CompressionJob).where(CompressionJob.id == job_id,
                                                          CompressionJob.status == RUNNING)
                             .values(status=CANCELLED, updated_at=now()))
            else:
                conn.execute(delete(CompressionJob).where(CompressionJob.id == job_id))
        return job

    def delete_job(self, job_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(CompressionJob).where(CompressionJob.id == job_id))

    def release_stale_jobs(self, stale_before: datetime, max_attempts: int, host: str | None = None) -> list[JobInfo]:
        """Running (or cancelling) jobs whose worker died: not updated since ``stale_before``, or claimed by a
        process of ``host`` that is gone. Running ones are queued again (failed after ``max_attempts``
        claims: a book that kills its worker must not kill the next one too); cancelling ones are deleted.
        Returns them as they were, for the caller to log and clean up."""
        rows = self.jobs([RUNNING, CANCELLED])
        dead = [j for j in rows if j.updated_at < stale_before or (host and dead_here(j.worker, host))]
        if not dead:
            return []
        ids = [j.id for j in dead]
        with self.engine.begin() as conn:
            conn.execute(delete(CompressionJob).where(CompressionJob.id.in_(ids),
                                                      CompressionJob.status == CANCELLED))
            # only rows still as we saw them: a heartbeat in between keeps its job
            seen = or_(*[and_(CompressionJob.id == j.id, CompressionJob.worker == j.worker,
                              CompressionJob.updated_at == j.updated_at) for j in dead if j.status == RUNNING]) \
                if any(j.status == RUNNING for j in dead) else None
            if seen is not None:
                conn.execute(update(CompressionJob).where(CompressionJob.status == RUNNING, seen).values(
                    status=case((CompressionJob.attempts >= max_attempts, FAILED), else_=QUEUED),
                    error=case((CompressionJob.attempts >= max_attempts,
                                f"its worker died {max_attempts} times while compressing it"), else_=None),
                    worker=None, updated_at=now()))
        return dead
