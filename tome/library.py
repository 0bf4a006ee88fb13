"""The library: files in (ingest, resume after a crash, re-ingest) and out (delete), all or nothing."""
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
    timings: dict = field(default_factory=dict)  # extract_s, segment_s, embed_s, compress_s, store_s

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Recovery:
    """What the start-up check found and did."""

    resumed: list[str] = field(default_factory=list)  # documents whose ingestion was finished
    removed: list[str] = field(default_factory=list)  # unfinished documents that could not be finished
    orphans: list[str] = field(default_factory=list)  # files no row pointed at, deleted


class Library:
    """Ingestion and removal of documents: rows, embeddings, memory files and kept originals together."""

    def __init__(self, models: Models, store: Store, files: MemoryFiles, uploads: Uploads,
                 retriever: Retriever, memories: Memories):
        self.models, self.store, self.files, self.uploads = models, store, files, uploads
        self.retriever, self.memories = retriever, memories
        retriever.pages_of = self._pages_of  # exact page breaks for passages made after ingestion

    def _pages_of(self, doc: DocumentInfo):
        """A stored document's pages, read again from its kept upload (None when it is gone)."""
        upload = self.uploads.find(doc.sha256)
        if upload is None:
            return None
        cfg = self.models.config
        return read_document(upload, max_bytes=cfg.max_file_mb << 20, title=doc.title).pages

    def delete(self, doc_id: int) -> None:
        """Remove a document's rows, memory files and kept upload."""
        doc = self.store.get_document(doc_id)
        self.store.delete_document(doc.id)
        self.files.remove_document(doc.sha256)
        self.uploads.drop(doc.sha256)

    def ingest(self, path: str | Path, filename: str | None = None, password: str | None = None,
               progress: Progress | None = None) -> IngestResult:
        """Read, segment, compress and store one file: all of it, or nothing.

        Errors come back in the result. An ingestion killed half-way leaves the
        document ``ingesting`` (never offered for questions); ``recover`` or the
        next ingestion of the same file finishes it from its last saved chunk.
        """
        path = Path(path)
        name = filename or path.name
        report = progress or (lambda frac, msg: None)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        doc, sha = None, None
        try:
            report(0.0, f"{name}: reading")
            if not path.is_file():
                raise IngestError(f"{name}: file not found")
            sha = sha256_file(path)
            existing = self.store.find_by_sha(sha)
            if existing and existing.ready:
                report(1.0, f"{name}: already in the library")
                return IngestResult(name, existing, duplicate=True, seconds=time.perf_counter() - t0)
            doc, segments = self._store_text(path, name, sha, existing, password, report, timings)
            memset = None
            if self.models.config.compress:
                t = time.perf_counter()
                memset = self.memories.compress(doc, segments, name, report)
                timings["compress_s"] = time.perf_counter() - t
            t = time.perf_counter()
            report(0.97, f"{name}: storing")
            doc = self.store.finish_document(doc.id, memset)
            self.files.remove_parts(doc.sha256)
            timings["store_s"] = time.perf_counter() - t
        except IngestError as e:
            log.info("ingest refused: %s", e)
            if doc is None and sha and not self.store.find_by_sha(sha):
                self.uploads.drop(sha)
            return IngestResult(name, error=str(e), seconds=time.perf_counter() - t0)
        except Exception as e:
            # Anything unexpected after rows exist: remove them, so nothing half-stored stays visible.
            log.exception("ingestion of %s failed", name)
            if doc is not None:
                self.delete(doc.id)
            return IngestResult(name, error=f"{name}: ingestion failed ({type(e).__name__}: {e})",
                                seconds=time.perf_counter() - t0)
        report(1.0, f"{name}: done")
        return IngestResult(name, doc, seconds=time.perf_counter() - t0, timings=timings)

    def _store_text(self, path: Path, name: str, sha: str, existing: DocumentInfo | None, password: str | None,
                    report: Progress, timings: dict):
        """Pages, segments and embeddings of a file, stored as an ``ingesting`` document (or the resumed one)."""
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
        embedder = self.retriever.embedder.name
        embeddings = None
        if existing is None or existing.embedder != embedder:
            t = time.perf_counter()
            embeddings = self.retriever.embed(segments, name, report)
            timings["embed_s"] = time.perf_counter() - t
        if existing is None:
            doc = self.store.begin_document(
                sha256=sha, title=extracted.title, filename=name, kind=extracted.kind,
                pages=len(extracted.pages), segments=segments, extractor=extracted.extractor,
                embeddings=embeddings, embedder=embedder)
        else:  # resuming an interrupted ingestion (rows were stored before it stopped)
            doc = existing
            if embeddings is not None:
                doc = self.store.set_embeddings(doc.id, embedder, embeddings)
        if doc.passage_embedder != embedder:  # passages: <= 200 word pieces, one page each, with vectors
            t = time.perf_counter()
            passages = self.retriever.passages_of(segments, extracted.pages)
            doc = self.store.set_passages(doc.id, embedder, passages,
                                          self.retriever.embed_passages(passages, name, report))
            timings["embed_s"] = timings.get("embed_s", 0.0) + time.perf_counter() - t
        return doc, segments

    def recover(self) -> Recovery:
        """Start-up check: finish or remove unfinished ingestions, delete files no row points at."""
        resumed, removed = [], []
        for doc in self.store.unfinished_documents():
            upload = self.uploads.find(doc.sha256)
            if upload is not None:
                r = self.ingest(upload, filename=doc.filename)
                if r.ok:
                    resumed.append(doc.title)
                    continue
            if self.store.find_by_sha(doc.sha256):
                self.delete(doc.id)
            removed.append(doc.title)
        busy = [d.sha256 for d in self.store.unfinished_documents()]
        orphans = self.files.orphans([m.path for m in self.store.memory_sets()], busy)
        orphans += self.uploads.orphans(d.sha256 for d in self.store.list_documents())
        for f in orphans:
            f.unlink(missing_ok=True)
        if resumed or removed or orphans:
            log.info("start-up check: finished %s, removed %s, deleted %d orphan files",
                     resumed, removed, len(orphans))
        return Recovery(resumed, removed, [str(f) for f in orphans])

    def reingest(self, doc_id: int, progress: Progress | None = None) -> IngestResult:
        """Make a document again from its kept upload (after a corrupt or missing memory file)."""
        doc = self.store.get_document(doc_id)
        upload = self.uploads.find(doc.sha256)
        if upload is None:
            return IngestResult(doc.filename, error=f"{doc.title}: the original file is gone; upload it again")
        keep = self.uploads.root / f".reingest-{upload.name}"
        shutil.copyfile(upload, keep)
        try:
            self.delete(doc.id)
            return self.ingest(keep, filename=doc.filename, progress=progress)
        finally:
            keep.unlink(missing_ok=True)
