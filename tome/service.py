"""``Tome``: the facade the UI and the CLI call, and nothing below it.

It owns one of each part and passes calls through: ``Models`` (base model,
adapters, cache policies), ``Library`` (ingest / recover / re-ingest / delete),
``Memories`` (make, store and load memories), ``Retriever`` (scores of
segments for a question) and ``Answerer`` (one context builder per mode,
one generation path).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from retrieval.retriever import Retrieved, Retriever
from storage import DocumentInfo, MemoryFiles, Store
from tome.answer import AnswerUpdate, Answerer
from tome.config import RATIOS, Config
from tome.library import IngestResult, Library, Progress, Recovery
from tome.memories import Memories
from tome.models import Models
from tome.queue import JobProgress, Queue, job_status
from tome.timing import Timer
from tome.uploads import Uploads
from uio.torch_thread import run_on_torch


class Tome:
    """Everything the UI and the CLI can do. One instance serves all users of a process."""

    def __init__(self, config: Config, lm=None, adapter=None):
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.models = Models(config, lm, adapter)
        self.store = Store(config.db)
        self.files = MemoryFiles(config.memories_path)
        self.retriever = Retriever(self.store, config.embedder, config.vector_index_min, run=run_on_torch)
        self.memories = Memories(self.models, self.store, self.files, config.memory_cache_mb)
        self.queue = Queue(self.models, self.store, self.files, self.memories)
        self.library = Library(self.models, self.store, self.files, Uploads(config.uploads_path),
                               self.retriever, self.memories, self.queue)
        self.answerer = Answerer(self.models, self.store, self.retriever, self.memories)

    # -- model -----------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self.models.config

    @config.setter
    def config(self, config: Config) -> None:
        """Settings read per question (budgets, policies, compressor) follow; the model and store stay."""
        self.models.config = config

    @property
    def lm(self):
        return self.models.lm

    @property
    def model_name(self) -> str:
        return self.models.name

    def use_model(self, name: str) -> None:
        """Switch the base model for everyone (one model serves all sessions); memories follow lazily."""
        if self.models.switch(name):
            self.memories.clear()

    def adapter_file(self, ratio: int | None = None) -> Path | None:
        return self.models.adapter_file(ratio)

    def adapter_for(self, ratio: int | None = None):
        return self.models.adapter_for(ratio)

    @property
    def adapter(self):
        """The adapter of the configured ratio: it makes the memories stored at ingestion."""
        return self.models.adapter_for()

    def adapter_trained(self, ratio: int | None = None) -> bool:
        return self.models.adapter_trained(ratio)

    def memory_identity(self, ratio: int | None = None, compressor: str | None = None) -> str:
        """The fingerprint memories of ``compressor`` at ``ratio`` (default: the config's) carry for this model."""
        return self.models.compressor(ratio, compressor).identity(self.lm)

    def cache_policy(self, name: str | None = None, eviction: float | None = None):
        return self.models.cache_policy(name, eviction)

    def compressor_choices(self) -> list[tuple[str, str]]:
        """(label, name) of every compressor, "auto" first: what the UI offers."""
        from uio.compress import compressor_choices, compressor_label

        return [(compressor_label(n), n) for n in compressor_choices()]

    def ratio_choices(self) -> tuple[int, ...]:
        return RATIOS

    def policy_choices(self) -> list[tuple[str, str]]:
        """(label, name) of every recent-cache policy, "auto" first: what the UI offers."""
        from uio.cache import policy_choices, policy_label

        return [(policy_label(n), n) for n in policy_choices()]

    @property
    def embedder(self):
        return self.retriever.embedder

    # -- library ---------------------------------------------------------------
    def documents(self) -> list[DocumentInfo]:
        return self.store.list_documents()

    def document(self, ref: int | str) -> DocumentInfo:
        return self.store.get_document(ref)

    def ingest(self, path: str | Path, filename: str | None = None, password: str | None = None,
               progress: Progress | None = None, wait: bool = True) -> IngestResult:
        """Stage 1 (the book becomes askable), then its memories: made here when ``wait`` (the default of
        the API and the CLI), else left to the queue's worker (what the UI does)."""
        return self.library.ingest(path, filename, password, progress, wait)

    def delete(self, doc_id: int) -> None:
        self.library.delete(doc_id)

    def recover(self) -> Recovery:
        return self.library.recover()

    def reingest(self, doc_id: int, progress: Progress | None = None, wait: bool = True) -> IngestResult:
        return self.library.reingest(doc_id, progress, wait)

    def needs_recovery(self) -> bool:
        """Whether a start-up check has anything to do (an unfinished ingestion or compression, or memory
        files to reconcile)."""
        return (bool(self.store.unfinished_documents()) or self.config.memories_path.exists()
                or bool(self.store.jobs(("queued", "running", "cancelled"))))

    # -- stage 2: the compression queue ------------------------------------------------
    def start_worker(self) -> None:
        """Make memories in a background thread of this process (``app.py serve``), one book at a time."""
        self.queue.start()

    def stop_worker(self, timeout: float | None = 30.0) -> None:
        self.queue.stop(timeout)

    def compress_queued(self, progress: Progress | None = None):
        """Run the queued compression jobs here until none is left (the CLI's worker)."""
        return self.queue.drain(progress)

    def wait_compressed(self, doc_id: int, progress: Progress | None = None):
        """Until the book's memories are made (running its job here if still queued); the job as it ended."""
        return self.queue.wait_for(doc_id, progress)

    def cancel_compression(self, doc_id: int) -> bool:
        """Stop making a book's memories: partial chunk files and the job go; the book stays askable."""
        return self.queue.cancel(doc_id)

    def compression(self, doc_ids=None) -> list[JobProgress]:
        """Stage-2 jobs (of ``doc_ids``) with rate and ETA, in queue order."""
        return self.queue.progress(doc_ids)

    def book_status(self, doc: DocumentInfo, progress: dict[int, JobProgress] | None = None) -> str:
        """One book's state in plain text: "ingesting", "ready", "queued 0/40 (...)", "compressing 12/40
        (ETA 3 min)", "failed: ...". ``progress``: {document id: JobProgress} when listing many books."""
        if not doc.ready:
            return "ingesting"
        if progress is None:
            progress = {p.job.document_id: p for p in self.compression([doc.id])
                        if p.job.compressor == self.models.compressor_name() and p.job.ratio == self.config.ratio}
        p = progress.get(doc.id)
        return job_status(p) if p is not None else "ready"

    def memories_pending(self, doc_refs: Sequence[int | str], ratio: int | None = None,
                         compressor: str | None = None) -> list[str]:
        """For compressed mode: why each chosen book cannot answer from memories yet ("memories of X are
        12/40 segments done (ETA 3 min)"); empty when all can (made, or made on demand for another choice)."""
        from tome.queue import MemoriesPending, check_not_queued

        made_by = self.models.compressor(ratio, compressor)
        fp = made_by.identity(self.lm)
        out = []
        for doc in (self.store.get_document(r) for r in doc_refs):
            if doc.ready and self.store.memory_set(doc.id, fp) is None:
                try:
                    check_not_queued(self.store, doc, made_by)
                except MemoriesPending as e:
                    out.append(e.progress)
        return out

    def memory(self, doc: DocumentInfo, ratio: int | None = None, progress: Progress | None = None,
               timer: Timer | None = None, compressor: str | None = None):
        return self.memories.load(doc, ratio, progress, timer, compressor)

    def collect_memories(self, dry_run: bool = False):
        """Remove (or with ``dry_run`` list) memory sets that no compressor in use makes."""
        return self.memories.collect(RATIOS, dry_run)

    def memory_sets(self, doc_id: int):
        return self.store.memory_sets(doc_id)

    def conversations(self):
        return self.store.list_conversations()

    def messages(self, conversation_id: int):
        return self.store.messages(conversation_id)

    # -- questions -------------------------------------------------------------
    def scores(self, docs: Sequence[DocumentInfo], question: str, k: int | None = None) -> dict[int, dict[int, float]]:
        return self.retriever.scores(docs, question, k)

    def retrieve(self, doc_refs: Sequence[int | str], query: str, k: int = 4) -> list[Retrieved]:
        """The ``k`` passages of the chosen books that best match ``query``, best first (no model needed)."""
        docs = [d for d in (self.store.get_document(r) for r in doc_refs) if d.ready]
        return self.retriever.retrieve(docs, query, k)

    def memory_budget(self, excerpts: bool = False) -> int:
        return self.answerer.memory_budget(excerpts)

    def ask(self, doc_refs: Sequence[int | str], question: str, **kwargs) -> Iterator[AnswerUpdate]:
        """Answer ``question`` over the chosen books, streaming (``tome.answer.Answerer.ask``)."""
        return self.answerer.ask(doc_refs, question, **kwargs)
