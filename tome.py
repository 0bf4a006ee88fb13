"""Tome's service layer: configuration and the facade the UI and CLI call.

Data flows one way: ``ingest`` turns a file into pages and segments,
``storage`` keeps them, ``uio`` turns them into an answer. This module wires
those packages together and is the only place that reads environment
variables. The UI imports this module and nothing below it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ingest import IngestError, read_document, split_segments
from storage import DocumentInfo, Store

log = logging.getLogger("tome")


@dataclass
class Config:
    """Every setting of Tome, with its default. ``from_env`` is the one reader of the environment."""

    data_dir: Path = Path("data")
    db_url: str = ""  # empty: SQLite file ``tome.sqlite`` under data_dir
    model: str = "qwen"  # "qwen" (embedded default), "smollm2" (embedded, fast), a hub id or a path
    models_dir: Path | None = None  # where prepared model copies live; default data_dir/models
    device: str = "auto"  # "auto", "cpu", "cuda"
    dtype: str = "auto"  # "auto", "float32", "bfloat16", "float16"
    segment_len: int = 1024  # l: tokens per segment
    context_budget: int = 3072  # max document tokens put in the prompt (keeps a CPU answer interactive)
    max_new_tokens: int = 256
    max_file_mb: int = 200
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    tune_malloc: bool = True  # glibc allocator tuning at start-up (see uio/runtime.py)
    host: str = "127.0.0.1"
    port: int = 7860

    @property
    def db(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'tome.sqlite').resolve()}"

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def uploads_path(self) -> Path:
        return self.data_dir / "uploads"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> "Config":
        env = os.environ if env is None else env
        cfg = cls()
        readers = {
            "TOME_DATA_DIR": ("data_dir", Path),
            "TOME_DB_URL": ("db_url", str),
            "TOME_MODEL": ("model", str),
            "TOME_MODELS_DIR": ("models_dir", Path),
            "TOME_DEVICE": ("device", str),
            "TOME_DTYPE": ("dtype", str),
            "TOME_SEGMENT_LEN": ("segment_len", int),
            "TOME_CONTEXT_BUDGET": ("context_budget", int),
            "TOME_MAX_NEW_TOKENS": ("max_new_tokens", int),
            "TOME_MAX_FILE_MB": ("max_file_mb", int),
            "TOME_THREADS": ("threads", int),
            "TOME_TUNE_MALLOC": ("tune_malloc", lambda v: v.lower() not in ("0", "false", "no", "off")),
            "TOME_HOST": ("host", str),
            "TOME_PORT": ("port", int),
        }
        for var, (name, kind) in readers.items():
            if env.get(var):
                cfg = replace(cfg, **{name: kind(env[var])})
        return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class IngestResult:
    filename: str
    document: DocumentInfo | None = None
    error: str | None = None
    duplicate: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Source:
    """Where an answer's context came from: a book and a page range."""

    document_id: int
    title: str
    page_start: int
    page_end: int

    def label(self) -> str:
        pages = f"p. {self.page_start}" if self.page_start == self.page_end else f"pp. {self.page_start}-{self.page_end}"
        return f"{self.title}, {pages}"


@dataclass
class AnswerUpdate:
    """One step of a streamed answer; the last one has ``done`` set and the figures."""

    text: str
    done: bool = False
    mode: str = "uncompressed"
    conversation_id: int | None = None
    sources: list[Source] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # books that did not fit whole
    context_tokens: int = 0
    stats: dict = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _merge_sources(passages) -> list[Source]:
    """Contiguous passages of one book become one page range."""
    out: list[Source] = []
    for doc_id, p in passages:
        last = out[-1] if out else None
        if last and last.document_id == doc_id and p.segment.page_start <= last.page_end + 1:
            out[-1] = replace(last, page_end=max(last.page_end, p.segment.page_end))
        else:
            out.append(Source(doc_id, p.title, p.segment.page_start, p.segment.page_end))
    return out


class Tome:
    """Everything the UI and the CLI can do. One instance serves all users of a process."""

    def __init__(self, config: Config, lm=None):
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.db)
        self._lm = lm
        self._load_lock = threading.Lock()
        # One generation or ingestion at a time uses the model: CPU cores are the bottleneck,
        # and interleaving two would make both slow and mix nothing useful.
        self.model_lock = threading.Lock()

    # -- model ---------------------------------------------------------------
    @property
    def lm(self):
        if self._lm is None:
            with self._load_lock:
                if self._lm is None:
                    from uio.model import load_model
                    from uio.runtime import set_threads

                    set_threads(self.config.threads)
                    self._lm = load_model(self.config.model, self.config.models_path,
                                          self.config.device, self.config.dtype)
        return self._lm

    @property
    def model_name(self) -> str:
        return self._lm.name if self._lm else self.config.model

    # -- library -------------------------------------------------------------
    def documents(self) -> list[DocumentInfo]:
        return self.store.list_documents()

    def document(self, ref: int | str) -> DocumentInfo:
        return self.store.get_document(ref)

    def delete(self, doc_id: int) -> None:
        doc = self.store.get_document(doc_id)
        self.store.delete_document(doc.id)
        for f in self.config.uploads_path.glob(f"{doc.sha256}.*"):
            f.unlink(missing_ok=True)

    def ingest(self, path: str | Path, filename: str | None = None, password: str | None = None,
               progress: Progress | None = None) -> IngestResult:
        """Read, segment and store one file. Errors come back in the result, never half-stored."""
        path = Path(path)
        name = filename or path.name
        report = progress or (lambda frac, msg: None)
        t0 = time.perf_counter()
        try:
            report(0.0, f"{name}: reading")
            if not path.is_file():
                raise IngestError(f"{name}: file not found")
            sha = file_sha256(path)
            existing = self.store.find_by_sha(sha)
            if existing:
                report(1.0, f"{name}: already in the library")
                return IngestResult(name, existing, duplicate=True, seconds=time.perf_counter() - t0)
            extracted = read_document(path, max_bytes=self.config.max_file_mb << 20, title=name,
                                      password=password)
            report(0.3, f"{name}: {len(extracted.pages)} pages read; splitting into segments")
            segments = split_segments(extracted.pages, self.lm.tokenizer, self.config.segment_len)
            report(0.8, f"{name}: storing {len(segments)} segments")
            kept = self._keep_upload(path, sha, Path(name).suffix or ".pdf")
            try:
                doc = self.store.add_document(sha256=sha, title=extracted.title, filename=name,
                                              kind=extracted.kind, pages=len(extracted.pages),
                                              segments=segments)
            except BaseException:
                kept.unlink(missing_ok=True)
                raise
        except IngestError as e:
            log.info("ingest refused: %s", e)
            return IngestResult(name, error=str(e), seconds=time.perf_counter() - t0)
        report(1.0, f"{name}: done")
        return IngestResult(name, doc, seconds=time.perf_counter() - t0)

    def _keep_upload(self, path: Path, sha: str, suffix: str) -> Path:
        """Copy the original out of any temporary upload folder, so it can be re-read later."""
        dest_dir = self.config.uploads_path
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{sha}{suffix.lower()}"
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        return dest

    # -- questions -----------------------------------------------------------
    def context_budget(self, prompt_tokens: int, max_new_tokens: int) -> int:
        room = self.lm.window - prompt_tokens - max_new_tokens - 64  # 64: passage headers
        return max(0, min(self.config.context_budget, room))

    def ask(self, doc_refs: Sequence[int | str], question: str, history: Sequence[dict] = (),
            conversation_id: int | None = None, max_new_tokens: int | None = None,
            temperature: float = 0.0, stop: threading.Event | None = None) -> Iterator[AnswerUpdate]:
        """Answer ``question`` over the chosen books, streaming; saves both turns to the conversation."""
        from uio.generate import stream_chat
        from uio.prompt import build_messages, count_tokens, fit_budget

        question = question.strip()
        if not question:
            raise ValueError("the question is empty")
        docs = [self.store.get_document(r) for r in doc_refs]
        max_new = max_new_tokens or self.config.max_new_tokens
        lm = self.lm
        bare = count_tokens(lm.tokenizer, build_messages(fit_budget([], 0), question, history))
        budget = self.context_budget(bare, max_new)
        books = [(d.title, self.store.segments(d.id)) for d in docs]
        selection = fit_budget(books, budget)
        owner = {id(s): d.id for d, (_, segs) in zip(docs, books) for s in segs}
        messages = build_messages(selection, question, history)
        if conversation_id is None:
            conversation_id = self.store.new_conversation(question[:80], [d.id for d in docs])
        self.store.add_message(conversation_id, "user", question)
        update = AnswerUpdate(text="", conversation_id=conversation_id,
                              sources=_merge_sources((owner[id(p.segment)], p) for p in selection.passages),
                              truncated=selection.truncated, context_tokens=selection.tokens)
        with self.model_lock:
            gen = stream_chat(lm, messages, max_new_tokens=max_new, temperature=temperature, stop=stop)
            for piece in gen:
                update.text += piece
                yield replace(update)  # a snapshot: consumers may keep earlier updates
        update.stats = gen.stats.as_dict() | {"model": lm.name, "context_tokens": selection.tokens}
        update.done = True
        self.store.add_message(conversation_id, "assistant", update.text.strip(), mode=update.mode,
                               stats=update.stats | {"sources": [s.label() for s in update.sources]})
        update.text = update.text.strip()
        yield update
