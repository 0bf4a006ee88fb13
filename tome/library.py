"""The library: files in (ingest, resume after a crash, re-ingest) and out (delete).

Ingestion has two stages. Stage 1 (seconds: text, pages, segments, passages,
vectors, full text) is all or nothing and makes the book ``ready``: askable
uncompressed. Stage 2 (memories) is a job of the compression queue
(``tome.queue``), run by a background worker or, with ``wait=True``, here.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ingest import IngestError, read_document, split_segments
from retrieval.retriever import Retriever
from storage import DocumentInfo, MemoryFiles, Store
from storage.files import sha256_file
from tome.memories import Memories
from tome.models import Models
from tome.queue import Queue
from tome.uploads import Uploads

log = logging.getLogger("tome")

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class IngestResult:
    filename: str
    document: DocumentInfo | None = None
    error: str | None = None
    duplicate: bool = False
    seconds: float = 0.0
    # stage 1: extract_s (pages), segment_s, embed_s (passages cut and embedded), store_s (rows, full text, ready);
    # compress_s: stage 2, when waited for
    timings: dict = field(default_factory=dict)
    job: object = None  # storage.JobInfo of stage 2 (None: compression off); as it ended when waited for

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Recovery:
    """What the start-up check found and did."""

    resumed: list[str] = field(default_factory=list)  # documents whose stage 1 was finished
    removed: list[str] = field(default_factory=list)  # unfinished documents that could not be finished
    orphans: list[str] = field(default_factory=list)  # files no row pointed at, deleted
    requeued: list[str] = field(default_factory=list)  # documents whose compression was queued again


class Library:
    """Ingestion and removal of documents: rows, embeddings, memory files and kept originals together."""

    def __init__(self, models: Models, store: Store, files: MemoryFiles, uploads: Uploads,
                 retriever: Retriever, memories: Memories, queue: Queue):
        self.models, self.store, self.files, self.uploads = models, store, files, uploads
        self.retriever, self.memories, self.queue = retriever, memories, queue
        retriever.pages_of = self._pages_of  # exact page breaks for passages made after ingestion
        queue.pages_of = self._pages_of  # stage 2 compresses stage 1's exact tokens

    def _pages_of(self, doc: DocumentInfo):
        """A stored document's pages, read again from its kept upload (None when it is gone)."""
        upload = self.uploads.find(doc.sha256)
        if upload is None:
            return None
        cfg = self.models.config
        return read_document(upload, max_bytes=cfg.max_file_mb << 20, title=doc.title).pages

    def delete(self, doc_id: int) -> None:
        """Remove a document's rows (its compression job too: a worker on it stops), memory files and upload."""
        doc = self.store.get_document(doc_id)
        self.store.delete_document(doc.id)
        self.files.remove_document(doc.sha256)
        self.uploads.drop(doc.sha256)

    def ingest(self, path: str | Path, filename: str | None = None, password: str | None = None,
               progress: Progress | None = None, wait: bool = True) -> IngestResult:
        """Stage 1 of one file (all of it, or nothing), then its memories queued (stage 2).

        ``wait``: run stage 2 here too (in the queue's order for this book) and return once the memories
        are stored; else return as soon as the book is askable. ``progress`` gets the overall fraction
        (stage 1 up to 0.2 when waiting) and a message naming the stage. Errors come back in the result;
        a stage-2 failure leaves the book askable uncompressed (its job shows ``failed``). An ingestion
        killed in stage 1 leaves the document ``ingesting`` (never offered for questions): ``recover`` or
        the next ingestion of the same file finishes it; one killed in stage 2 resumes from its last chunk.
        """
        path = Path(path)
        name = filename or path.name
        report = progress or (lambda frac, msg: None)
        compress = self.models.config.compress
        share = 0.2 if wait and compress else 1.0  # of the overall bar; stage 2 is most of the time
        stage1 = (lambda f, m: report(f * share, m)) if share < 1 else report
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        doc, sha = None, None
        try:
            stage1(0.0, f"{name}: stage 1/2, reading")
            if not path.is_file():
                raise IngestError(f"{name}: file not found")
            sha = sha256_file(path)
            existing = self.store.find_by_sha(sha)
            if existing and existing.ready:
                job = self.queue.job_of(existing.id)
                if wait and job is not None and job.active:
                    job = self._stage2(existing, report, share, timings)
                report(1.0, f"{name}: already in the library")
                return IngestResult(name, existing, duplicate=True, seconds=time.perf_counter() - t0, job=job)
            doc, segments = self._store_text(path, name, sha, existing, password, stage1, timings)
            t = time.perf_counter()
            stage1(0.97, f"{name}: storing")
            job = self.queue.enqueue(doc) if compress else None  # queued before ready: a crash between is resumed
            doc = self.store.finish_document(doc.id)
            timings["store_s"] = timings.get("store_s", 0.0) + time.perf_counter() - t
        except IngestError as e:
            log.info("ingest refused: %s", e)
            if doc is None and sha and not self.store.find_by_sha(sha):
                self.uploads.drop(sha)
            return IngestResult(name, error=str(e), seconds=time.perf_counter() - t0)
        except Exception as e:
            # Anything unexpected after rows exist: remove them, so nothing half-stored stays visible.
            log.exception("ingestion of %s failed", name)
            doc = doc or (self.store.find_by_sha(sha) if sha else None)  # rows stored before _store_text failed
            if doc is not None:
                self.delete(doc.id)
            elif sha and not self.store.find_by_sha(sha):  # failed before any row: the kept copy goes too
                self.uploads.drop(sha)
            return IngestResult(name, error=f"{name}: ingestion failed ({type(e).__name__}: {e})",
                                seconds=time.perf_counter() - t0)
        stage1(1.0, f"{name}: stage 1/2 done, askable")
        if wait and job is not None:
            job = self._stage2(doc, report, share, timings)
            if job is not None and job.status == "failed":
                return IngestResult(name, doc, error=f"{name}: making its memories failed ({job.error}); "
                                                     "it is askable uncompressed", seconds=time.perf_counter() - t0,
                                    timings=timings, job=job)
        report(1.0, f"{name}: done")
        return IngestResult(name, doc, seconds=time.perf_counter() - t0, timings=timings, job=job)

    def _stage2(self, doc: DocumentInfo, report: Progress, share: float, timings: dict):
        """Wait for the document's memories, running its job here when it is still queued."""
        t = time.perf_counter()
        job = self.queue.wait_for(doc.id, lambda f, m: report(share + (1 - share) * f, m.replace(
            ": memories", ": stage 2/2, memories", 1)))
        timings["compress_s"] = time.perf_counter() - t
        return job

    def _store_text(self, path: Path, name: str, sha: str, existing: DocumentInfo | None, password: str | None,
                    report: Progress, timings: dict):
        """Pages, segments and passages with their vectors, stored as an ``ingesting`` document (or the resumed one)."""
        t0 = time.perf_counter()
        cfg = self.models.config
        extracted = read_document(path, max_bytes=cfg.max_file_mb << 20, title=name, password=password)
        timings["extract_s"] = time.perf_counter() - t0
        report(0.1, f"{name}: {len(extracted.pages)} pages read; splitting into segments")
        t = time.perf_counter()
        segments = split_segments(extracted.pages, self.models.lm.tokenizer, cfg.segment_len)
        if not segments:
            raise IngestError(f"{name}: contains no text")
        timings["segment_s"] = time.perf_counter() - t
        self.uploads.keep(path, sha, Path(name).suffix or ".pdf")
        # Questions are matched against passages (and the full text); whole-segment vectors are only the
        # old baseline of bench/eval_retrieval.py, which Retriever.segment_scores makes on demand.
        embedder = self.retriever.embedder.name
        passages = vectors = None
        if existing is None or existing.passage_embedder != embedder:  # <= 200 word pieces, one page each
            t = time.perf_counter()
            passages = self.retriever.passages_of(segments, extracted.pages)
            vectors = self.retriever.embed_passages(passages, name, report)
            timings["embed_s"] = time.perf_counter() - t
        t = time.perf_counter()
        report(0.15, f"{name}: storing text and indexes")
        if existing is None:
            doc = self.store.begin_document(
                sha256=sha, title=extracted.title, filename=name, kind=extracted.kind,
                pages=len(extracted.pages), segments=segments, extractor=extracted.extractor)
        else:  # resuming an interrupted ingestion (rows were stored before it stopped)
            doc = existing
        if passages is not None:
            doc = self.store.set_passages(doc.id, embedder, passages, vectors)
        timings["store_s"] = time.perf_counter() - t
        return doc, segments

    def recover(self) -> Recovery:
        """Start-up check: finish or remove documents stage 1 left unfinished, queue again the compression
        of dead workers (it resumes from its chunks), delete files no row points at."""
        resumed, removed = [], []
        for doc in self.store.unfinished_documents():
            upload = self.uploads.find(doc.sha256)
            if upload is not None:
                r = self.ingest(upload, filename=doc.filename, wait=False)
                if r.ok:
                    resumed.append(doc.title)
                    continue
            if self.store.find_by_sha(doc.sha256):
                self.delete(doc.id)
            removed.append(doc.title)
        requeued = [j.title for j in self.queue.recover()]
        # chunk files of unfinished documents and of queued or running jobs are work in progress
        busy = {d.sha256 for d in self.store.unfinished_documents()}
        active = {j.document_id for j in self.store.jobs(("queued", "running", "cancelled"))}
        busy |= {d.sha256 for d in self.store.list_documents() if d.id in active}
        orphans = self.files.orphans([m.path for m in self.store.memory_sets()], busy)
        orphans += self.uploads.orphans(d.sha256 for d in self.store.list_documents())
        for f in orphans:
            f.unlink(missing_ok=True)
        if resumed or removed or requeued or orphans:
            log.info("start-up check: finished %s, removed %s, compression queued again for %s, "
                     "deleted %d orphan files", resumed, removed, requeued, len(orphans))
        return Recovery(resumed, removed, [str(f) for f in orphans], requeued)

    def reingest(self, doc_id: int, progress: Progress | None = None, wait: bool = True) -> IngestResult:
        """Make a document again from its kept upload (after a corrupt or missing memory file)."""
        doc = self.store.get_document(doc_id)
        upload = self.uploads.find(doc.sha256)
        if upload is None:
            return IngestResult(doc.filename, error=f"{doc.title}: the original file is gone; upload it again")
        keep = self.uploads.root / f".reingest-{upload.name}"
        shutil.copyfile(upload, keep)
        try:
            self.delete(doc.id)
            return self.ingest(keep, filename=doc.filename, progress=progress, wait=wait)
        finally:
            keep.unlink(missing_ok=True)
