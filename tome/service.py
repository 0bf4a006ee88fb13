"""Tome's service layer: configuration and the facade the UI and CLI call.

Data flows one way: ``ingest`` turns a file into pages and segments,
``storage`` keeps them, ``uio`` turns them into an answer. This module wires
those packages together and is the only place that reads environment
variables. The UI imports this module and nothing below it.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ingest import IngestError, read_document, split_segments
from storage import CorruptMemory, DocumentInfo, MemoryFiles, MemorySetInfo, Store
from storage.files import sha256_file
from retrieval.search import VectorSearch
from tome.lru import ByteLRU
from tome.timing import Timer, maybe

log = logging.getLogger("tome")


def _flag(value: str) -> bool:
    return value.strip().lower() not in ("0", "false", "no", "off", "")


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
    ratio: int = 8  # compression ratio of the memories: 8 (M=128 slots per segment) or 32 (M=32)
    compress: bool = True  # compress every ingested document into memories (the compressed mode needs it)
    adapter: Path | None = None  # UIO adapter file; default: the one shipped for the model and ratio
    compress_batch: int = 4  # segments per encoder batch
    chunk_segments: int = 16  # segments per saved chunk: an interrupted ingestion resumes from the last one
    # Most memory slots a compressed answer attends to (best segments first); 0: all that fit the window;
    # -1 (auto): all on a GPU, on a CPU as many as keep the first token near a 1-page question's
    # (uio.model.flat_ttft_slots: 768 for SmolLM2, 2,080 for Qwen).
    memory_budget: int = -1
    memory_cache_mb: int = 1024  # MB of documents' memories kept between questions (in RAM; on the GPU if used)
    int8_ingest: bool = False  # CPU ingestion through an int8 copy of the model (faster; see uio/quant.py)
    ray_address: str = ""  # ingest over Ray: "local" (start one here), "auto", or ray://host:port; empty: off
    ray_actors: int = 2  # Ray actors (one per GPU when the cluster has GPUs), each holding model + adapter
    context_budget: int = 3072  # max document tokens put in the prompt (keeps a CPU answer interactive)
    embedder: str = "minilm"  # segment embedder: "minilm" (all-MiniLM-L6-v2, shipped in a wheel), a hub id or a path
    neighbours: int = 1  # segments on each side of a retrieved one that come with it, when they fit
    vector_index_min: int = 100_000  # above this many segments (SQLite), search through the sqlite-vec index
    max_new_tokens: int = 256
    # Policy for the recent (uncompressed) cache: "auto" (the Attention-Gate for the models in
    # uio.cache.AUTO_GATES, else full), "full", "streaming", "h2o" or "gate"; eviction is the share of recent
    # tokens each policy drops (stored memories are never evicted).
    cache_policy: str = "auto"
    cache_eviction: float = 0.6
    max_file_mb: int = 200
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    tune_malloc: bool = True  # glibc allocator tuning at start-up (see uio/runtime.py)
    host: str = "127.0.0.1"
    port: int = 7860
    auth: str = ""  # "user:password" protects the UI; empty: no login (it binds to loopback by default)

    @property
    def db(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'tome.sqlite').resolve()}"

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def uploads_path(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def memories_path(self) -> Path:
        return self.data_dir / "memories"

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
            "TOME_RATIO": ("ratio", int),
            "TOME_COMPRESS": ("compress", _flag),
            "TOME_ADAPTER": ("adapter", Path),
            "TOME_CHUNK_SEGMENTS": ("chunk_segments", int),
            "TOME_MEMORY_CACHE_MB": ("memory_cache_mb", int),
            "TOME_MEMORY_BUDGET": ("memory_budget", int),
            "TOME_INT8_INGEST": ("int8_ingest", _flag),
            "TOME_RAY_ADDRESS": ("ray_address", str),
            "TOME_RAY_ACTORS": ("ray_actors", int),
            "TOME_CONTEXT_BUDGET": ("context_budget", int),
            "TOME_EMBEDDER": ("embedder", str),
            "TOME_NEIGHBOURS": ("neighbours", int),
            "TOME_VECTOR_INDEX_MIN": ("vector_index_min", int),
            "TOME_MAX_NEW_TOKENS": ("max_new_tokens", int),
            "TOME_CACHE_POLICY": ("cache_policy", str),
            "TOME_CACHE_EVICTION": ("cache_eviction", float),
            "TOME_MAX_FILE_MB": ("max_file_mb", int),
            "TOME_THREADS": ("threads", int),
            "TOME_TUNE_MALLOC": ("tune_malloc", _flag),
            "TOME_HOST": ("host", str),
            "TOME_PORT": ("port", int),
            "TOME_AUTH": ("auth", str),
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
    timings: dict = field(default_factory=dict)  # extract_s, segment_s, embed_s, compress_s, store_s

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Source:
    """One segment an answer's context came from: book, page range, the start of its text, its score."""

    document_id: int
    title: str
    page_start: int
    page_end: int
    snippet: str = ""
    score: float | None = None  # cosine similarity to the question (None: not ranked)
    segment: int | None = None  # the segment's index in its document

    @property
    def pages(self) -> str:
        return f"p. {self.page_start}" if self.page_start == self.page_end else f"pp. {self.page_start}-{self.page_end}"

    def label(self) -> str:
        return f"{self.title}, {self.pages}"

    def as_dict(self) -> dict:
        """What is stored with the answer's message (JSON)."""
        return {"document_id": self.document_id, "title": self.title, "page_start": self.page_start,
                "page_end": self.page_end, "segment": self.segment, "label": self.label(),
                "score": None if self.score is None else round(self.score, 4), "snippet": self.snippet}


@dataclass(frozen=True)
class Retrieved:
    """A segment found for a query (``Tome.retrieve``): its book, text, pages and score."""

    document_id: int
    title: str
    index: int
    text: str
    page_start: int
    page_end: int
    score: float


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


file_sha256 = sha256_file
MODES = ("uncompressed", "compressed")
ADAPTERS_DIR = Path(__file__).resolve().parents[1] / "uio" / "adapters"
CACHE_POLICIES = ("auto", "full", "streaming", "h2o", "gate")


@dataclass(frozen=True)
class Recovery:
    """What the start-up check found and did."""

    resumed: list[str] = field(default_factory=list)  # documents whose ingestion was finished
    removed: list[str] = field(default_factory=list)  # unfinished documents that could not be finished
    orphans: list[str] = field(default_factory=list)  # files no row pointed at, deleted


@dataclass(frozen=True)
class _SlotSegment:
    """A segment seen through its memory: its size in the context is its number of slots."""

    text: str
    page_start: int
    page_end: int
    index: int
    slots: int

    @property
    def n_tokens(self) -> int:
        return self.slots


SNIPPET_CHARS = 200


_WORD = re.compile(r"\w{3,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _snippet(text: str, question: str = "") -> str:
    """A short quote of a segment: from the sentence sharing most words with the question (else its start)."""
    flat = " ".join(text.split())
    asked = {w.lower() for w in _WORD.findall(question)}
    sentences = _SENTENCE.split(flat)
    best = max(range(len(sentences)), key=lambda i: (len(asked & {w.lower() for w in _WORD.findall(sentences[i])}), -i))
    quote = " ".join(sentences[best:])
    lead = "… " if best else ""
    return lead + (quote if len(quote) <= SNIPPET_CHARS else quote[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " …")


def _sources(passages, question: str = "") -> list[Source]:
    """Every segment used, best score first (document order among equals): the answer's citations."""
    out = [Source(doc_id, p.title, p.segment.page_start, p.segment.page_end, _snippet(p.segment.text, question),
                  p.score, getattr(p.segment, "index", None)) for doc_id, p in passages]
    return sorted(out, key=lambda s: -s.score if s.score is not None else float("inf"))


class Tome:
    """Everything the UI and the CLI can do. One instance serves all users of a process."""

    def __init__(self, config: Config, lm=None, adapter=None):
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.db)
        self.files = MemoryFiles(config.memories_path)
        self.vectors = VectorSearch(self.store, index_threshold=config.vector_index_min)
        self._lm = lm
        self._lm_given = lm is not None  # a model handed over in code travels to Ray actors; a named one is loaded there
        self._adapters: dict[int, object] = {adapter.config.ratio: adapter} if adapter else {}
        self._embedder = None
        self._load_lock = threading.Lock()
        # One generation or compression at a time uses the model: CPU cores are the bottleneck,
        # and the encoder switches the model's adapters on while it runs.
        self.model_lock = threading.RLock()
        # file sha256 -> Memory, bounded in bytes: one big book must not push RAM over the edge
        self._memories = ByteLRU(config.memory_cache_mb << 20, size=lambda m: m.nbytes)
        self._encoders: dict[tuple, object] = {}  # (adapter fingerprint, kind) -> int8 encoder / Ray pool

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

    def adapter_file(self, ratio: int | None = None) -> Path | None:
        """The configured adapter, else the one shipped for this model and ratio (if any)."""
        ratio = ratio or self.config.ratio
        if self.config.adapter and ratio == self.config.ratio:
            return self.config.adapter
        from uio.model import embedded_key

        key = embedded_key(self.config.model)
        shipped = ADAPTERS_DIR / f"{key}-{ratio}x.safetensors" if key else None
        return shipped if shipped and shipped.is_file() else None

    def gate_file(self) -> Path | None:
        """The Attention-Gate weights shipped for the current model, if any (and if they fit the loaded one)."""
        from uio.cache import gate_fits, gate_weights_path
        from uio.model import embedded_key

        key = embedded_key(self.config.model)
        path = gate_weights_path(key) if key else None
        if not (path and path.is_file()):
            return None
        return path if self._lm is None or gate_fits(path, self._lm.model) else None

    def cache_policy(self, name: str | None = None, eviction: float | None = None):
        """The recent-cache policy object for ``name`` ("auto": the gate where it ships and
        ``uio.cache.AUTO_GATES`` lists the model, else full).

        None means the full cache (plain generation, no policy machinery in the way).
        """
        name = (name or self.config.cache_policy).lower()
        eviction = self.config.cache_eviction if eviction is None else eviction
        if name not in CACHE_POLICIES:
            raise ValueError(f"unknown cache policy {name!r}; use one of {', '.join(CACHE_POLICIES)}")
        # Looked up once per question: gate_file() reads the file's header to check it fits the model.
        gate = self.gate_file() if name in ("auto", "gate") else None
        if name == "auto":
            from uio.cache import AUTO_GATES
            from uio.model import embedded_key

            name = "gate" if gate and embedded_key(self.config.model) in AUTO_GATES else "full"
        if name == "full":
            return None
        if not 0.0 <= eviction < 1.0:
            raise ValueError(f"cache eviction must be in [0, 1), got {eviction}")
        if name == "gate" and gate is None:
            raise ValueError(f"no Attention-Gate weights ship for {self.model_name}; pick another cache policy "
                             "(docs/GATE.md says how to train them)")
        from uio.cache import make_policy

        # The gate file names its base model: a gate of another model is refused, not misapplied.
        return make_policy(name, eviction, gate_path=gate, model_name=self.config.model)

    def adapter_for(self, ratio: int | None = None):
        """The UIO adapter for a compression ratio (loaded once); untrained when none is shipped."""
        ratio = ratio or self.config.ratio
        if ratio not in self._adapters:
            lm = self.lm
            with self._load_lock:
                if ratio not in self._adapters:
                    from uio.adapter import UIOAdapter
                    from uio.memory import MemoryConfig

                    if self.config.segment_len % ratio:
                        raise ValueError(f"ratio {ratio} does not divide the segment length "
                                         f"{self.config.segment_len}")
                    path = self.adapter_file(ratio)
                    if path:
                        adapter = UIOAdapter.load(lm, path)
                        if adapter.config.segment_len != self.config.segment_len:
                            # Books are cut at config.segment_len; the encoder refuses longer segments.
                            raise ValueError(f"adapter {path.name} was trained for {adapter.config.segment_len}-token "
                                             f"segments, but TOME_SEGMENT_LEN is {self.config.segment_len}; "
                                             "set them equal or use another adapter")
                        self._adapters[ratio] = adapter
                    else:
                        log.warning("no trained UIO adapter for %s at %dx: compressed answers will be poor",
                                    lm.name, ratio)
                        self._adapters[ratio] = UIOAdapter(lm, MemoryConfig(
                            segment_len=self.config.segment_len, num_mem=self.config.segment_len // ratio))
        return self._adapters[ratio]

    @property
    def adapter(self):
        """The adapter of the configured ratio: it makes the memories stored at ingestion."""
        return self.adapter_for(self.config.ratio)

    def adapter_trained(self, ratio: int | None = None) -> bool:
        return self.adapter_file(ratio) is not None

    def use_model(self, name: str) -> None:
        """Switch the base model for everyone (one model serves all sessions); memories follow lazily."""
        with self.model_lock, self._load_lock:
            if name == self.config.model and self._lm is not None:
                return
            self.config = replace(self.config, model=name, adapter=None)
            self._lm, self._adapters = None, {}
            self._memories.clear()
            self._encoders.clear()

    @property
    def embedder(self):
        """The segment/question embedder (sentence-transformers), loaded on first use."""
        if self._embedder is None:
            from retrieval.embed import load_embedder

            with self._load_lock:
                if self._embedder is None:
                    self._embedder = load_embedder(self.config.embedder)
        return self._embedder

    # -- library -------------------------------------------------------------
    def documents(self) -> list[DocumentInfo]:
        return self.store.list_documents()

    def document(self, ref: int | str) -> DocumentInfo:
        return self.store.get_document(ref)

    def delete(self, doc_id: int) -> None:
        """Remove a document's rows, memory files and kept upload."""
        doc = self.store.get_document(doc_id)
        self.store.delete_document(doc.id)
        self.files.remove_document(doc.sha256)
        for f in self.config.uploads_path.glob(f"{doc.sha256}.*"):
            f.unlink(missing_ok=True)

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
            sha = file_sha256(path)
            existing = self.store.find_by_sha(sha)
            if existing and existing.ready:
                report(1.0, f"{name}: already in the library")
                return IngestResult(name, existing, duplicate=True, seconds=time.perf_counter() - t0)
            extracted = read_document(path, max_bytes=self.config.max_file_mb << 20, title=name,
                                      password=password)
            timings["extract_s"] = time.perf_counter() - t0
            report(0.1, f"{name}: {len(extracted.pages)} pages read; splitting into segments")
            t = time.perf_counter()
            segments = split_segments(extracted.pages, self.lm.tokenizer, self.config.segment_len)
            if not segments:
                raise IngestError(f"{name}: contains no text")
            timings["segment_s"] = time.perf_counter() - t
            self._keep_upload(path, sha, Path(name).suffix or ".pdf")
            embeddings = None
            if existing is None or existing.embedder != self.embedder.name:
                t = time.perf_counter()
                embeddings = self._embed(segments, name, report)
                timings["embed_s"] = time.perf_counter() - t
            if existing is None:
                doc = self.store.begin_document(
                    sha256=sha, title=extracted.title, filename=name, kind=extracted.kind,
                    pages=len(extracted.pages), segments=segments, extractor=extracted.extractor,
                    embeddings=embeddings, embedder=self.embedder.name)
            else:  # resuming an interrupted ingestion (rows were stored before it stopped)
                doc = existing
                if embeddings is not None:
                    doc = self.store.set_embeddings(doc.id, self.embedder.name, embeddings)
            memset = None
            if self.config.compress:
                t = time.perf_counter()
                memset = self._compress(doc, segments, name, report)
                timings["compress_s"] = time.perf_counter() - t
            t = time.perf_counter()
            report(0.97, f"{name}: storing")
            doc = self.store.finish_document(doc.id, memset)
            for chunk in self.files.of_document(doc.sha256):
                if ".chunk" in chunk.name:
                    chunk.unlink(missing_ok=True)
            timings["store_s"] = time.perf_counter() - t
        except IngestError as e:
            log.info("ingest refused: %s", e)
            if doc is None and sha and not self.store.find_by_sha(sha):
                self._drop_upload(sha)
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

    def _embed(self, segments, name: str, report: Progress) -> list[bytes]:
        """One embedding per segment (for choosing segments and citing pages), with progress."""
        from retrieval.embed import to_bytes

        n = len(segments)

        def step(done: int, _total: int) -> None:
            report(0.1 + 0.05 * done / n, f"{name}: embedded {done}/{n} segments")

        vectors = self.embedder.encode([s.text for s in segments], progress=step)
        return [to_bytes(v) for v in vectors]

    def _embedded(self, docs: Sequence[DocumentInfo]) -> list[DocumentInfo]:
        """``docs`` with embeddings from the current embedder, made now where missing or stale.

        Documents stored before embeddings existed (or embedded by another model)
        are embedded lazily, on the first question that uses them: their text is
        in the store, so this costs one pass of the small embedder, not a re-ingestion.
        """
        out = []
        for d in docs:
            if d.embedder != self.embedder.name:
                log.info("embedding %s with %s (first use)", d.title, self.embedder.name)
                d = self.store.set_embeddings(d.id, self.embedder.name,
                                              self._embed(self.store.segments(d.id), d.title, lambda *_: None))
            out.append(d)
        return out

    def scores(self, docs: Sequence[DocumentInfo], question: str, k: int | None = None) -> dict[int, dict[int, float]]:
        """Similarity of ``question`` to the segments of ``docs``: {document id: {segment index: cosine}}.

        ``k``: only the best k segments (default: all of them, up to the vector index's k limit).
        """
        docs = self._embedded(docs)
        n = self.store.count_segments([d.id for d in docs])
        hits = self.vectors.search(self.embedder.encode_one(question), docs, k or n)
        out: dict[int, dict[int, float]] = {d.id: {} for d in docs}
        for h in hits:
            out[h.document_id][h.index] = h.score
        return out

    def retrieve(self, doc_refs: Sequence[int | str], query: str, k: int = 4) -> list[Retrieved]:
        """The ``k`` segments of the chosen books closest to ``query``, best first (no model needed)."""
        docs = [self.store.get_document(r) for r in doc_refs]
        docs = [d for d in docs if d.ready]
        scores = self.scores(docs, query, k)
        out = []
        for d in docs:
            segs = self.store.segments(d.id)
            out += [Retrieved(d.id, d.title, j, segs[j].text, segs[j].page_start, segs[j].page_end, sc)
                    for j, sc in scores[d.id].items()]
        return sorted(out, key=lambda r: -r.score)

    def _compress(self, doc: DocumentInfo, segments, name: str, report: Progress,
                  adapter=None) -> MemorySetInfo:
        """Compress all segments chunk by chunk (each chunk saved), then write the whole memory file."""
        from uio.encoder import Encoder
        from uio.memory import Memory

        with self.model_lock:
            adapter = adapter or self.adapter
            fp, ratio = adapter.fingerprint, adapter.config.ratio
            encoder = self._encoder(adapter)
            n, size = len(segments), self.config.chunk_segments
            parts = []
            for c, start in enumerate(range(0, n, size)):
                chunk = segments[start:start + size]
                saved = self.files.root / self.files.part(doc.sha256, fp, ratio, c)
                if saved.is_file():
                    try:
                        parts.append(Memory.load(saved, expect_fingerprint=fp))
                        continue
                    except Exception as e:  # a damaged chunk is simply made again
                        log.warning("chunk %s unreadable (%s); recompressing", saved.name, e)

                def step(done: int, _total: int, start: int = start) -> None:
                    report(0.15 + 0.8 * (start + done) / n, f"{name}: compressed {start + done}/{n} segments")

                mem = encoder.compress([s.token_ids for s in chunk], segment_ids=[s.index for s in chunk],
                                       token_spans=[(s.token_start, s.token_end) for s in chunk],
                                       progress=step)
                mem.save(self.files.path(self.files.part(doc.sha256, fp, ratio, c)))
                parts.append(mem)
            rel = self.files.final(doc.sha256, fp, ratio)
            final = self.files.path(rel)
            Memory.concat(parts).save(final)
        return MemorySetInfo(doc.id, fp, ratio, rel, final.stat().st_size, sha256_file(final))

    def _encoder(self, adapter):
        """What compresses segments: the model itself, its int8 copy, or a pool of Ray actors.

        All three have ``compress(token lists, segment_ids, token_spans, progress) -> Memory``.
        """
        from uio.encoder import Encoder

        c = self.config
        if c.ray_address:
            key = (adapter.fingerprint, "ray")
            if key not in self._encoders:
                from uio.ray_pool import RayPool

                self._encoders[key] = RayPool.start(adapter, address=c.ray_address, actors=c.ray_actors,
                                                    batch_size=c.compress_batch, int8=c.int8_ingest,
                                                    model=self.lm if self._lm_given else c.model,
                                                    models_dir=c.models_path, dtype=c.dtype)
            return self._encoders[key]
        if c.int8_ingest and self.lm.device.type == "cpu":
            key = (adapter.fingerprint, "int8")
            if key not in self._encoders:
                from uio.quant import int8_encoder

                self._encoders[key] = int8_encoder(adapter, batch_size=c.compress_batch)
            return self._encoders[key]
        return Encoder(adapter, batch_size=c.compress_batch)

    def _keep_upload(self, path: Path, sha: str, suffix: str) -> Path:
        """Copy the original out of any temporary upload folder, so it can be re-read later."""
        dest_dir = self.config.uploads_path
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{sha}{suffix.lower()}"
        if not dest.is_file():
            tmp = dest.with_name(dest.name + ".part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        return dest

    def _drop_upload(self, sha: str | None) -> None:
        if sha:
            for f in self.config.uploads_path.glob(f"{sha}.*"):
                f.unlink(missing_ok=True)

    def recover(self) -> Recovery:
        """Start-up check: finish or remove unfinished ingestions, delete files no row points at."""
        resumed, removed = [], []
        for doc in self.store.unfinished_documents():
            upload = next(iter(sorted(self.config.uploads_path.glob(f"{doc.sha256}.*"))), None)
            if upload is not None and not upload.name.endswith(".part"):
                r = self.ingest(upload, filename=doc.filename)
                if r.ok:
                    resumed.append(doc.title)
                    continue
            if self.store.find_by_sha(doc.sha256):
                self.delete(doc.id)
            removed.append(doc.title)
        busy = [d.sha256 for d in self.store.unfinished_documents()]
        orphans = self.files.orphans([m.path for m in self.store.memory_sets()], busy)
        known = {d.sha256 for d in self.store.list_documents()}
        if self.config.uploads_path.is_dir():
            orphans += [f for f in self.config.uploads_path.iterdir()
                        if f.is_file() and f.name.split(".")[0] not in known]
        for f in orphans:
            f.unlink(missing_ok=True)
        if resumed or removed or orphans:
            log.info("start-up check: finished %s, removed %s, deleted %d orphan files",
                     resumed, removed, len(orphans))
        return Recovery(resumed, removed, [str(f) for f in orphans])

    # -- memories --------------------------------------------------------------
    def memory(self, doc: DocumentInfo, ratio: int | None = None, progress: Progress | None = None,
               timer: Timer | None = None):
        """A document's memories for the adapter of ``ratio``, checksum-verified, kept in a byte-bounded LRU.

        Memories missing for this adapter (another ratio, a new adapter, another
        model) are made now from the stored segments and recorded. The file is
        memory-mapped and loaded straight onto the model's device.
        """
        from uio.memory import Memory

        adapter = self.adapter_for(ratio)
        fp = adapter.fingerprint
        with maybe(timer, "lookup"):
            ms = self.store.memory_set(doc.id, fp)
        if ms is None:
            ms = self._compress_stored(doc, adapter, progress)
        mem = self._memories.get(ms.sha256)
        if mem is not None:
            return mem
        with maybe(timer, "read"):
            mem = Memory.load(self.files.verify(ms.path, ms.sha256), expect_fingerprint=fp,
                              device=str(self.lm.device))
        self._memories.put(ms.sha256, mem)
        return mem

    def _compress_stored(self, doc: DocumentInfo, adapter, progress: Progress | None) -> MemorySetInfo:
        from ingest import Segment

        limit = adapter.config.segment_len
        tok = self.lm.tokenizer
        segments = [Segment(r.index, r.text, r.page_start, r.page_end, r.token_start, r.token_end,
                            tuple(tok(r.text, add_special_tokens=False)["input_ids"][:limit]) or (tok.eos_token_id,))
                    for r in self.store.segments(doc.id)]
        log.info("making %dx memories of %r for the current adapter", adapter.config.ratio, doc.title)
        ms = self._compress(doc, segments, doc.title, progress or (lambda f, m: None), adapter)
        self.store.finish_document(doc.id, ms)
        for chunk in self.files.of_document(doc.sha256):
            if ".chunk" in chunk.name:
                chunk.unlink(missing_ok=True)
        return ms

    def reingest(self, doc_id: int, progress: Progress | None = None) -> IngestResult:
        """Make a document again from its kept upload (after a corrupt or missing memory file)."""
        doc = self.store.get_document(doc_id)
        upload = next(iter(sorted(self.config.uploads_path.glob(f"{doc.sha256}.*"))), None)
        if upload is None:
            return IngestResult(doc.filename, error=f"{doc.title}: the original file is gone; upload it again")
        keep = self.config.uploads_path / f".reingest-{upload.name}"
        shutil.copyfile(upload, keep)
        try:
            self.delete(doc.id)
            return self.ingest(keep, filename=doc.filename, progress=progress)
        finally:
            keep.unlink(missing_ok=True)

    # -- questions -----------------------------------------------------------
    def context_budget(self, prompt_tokens: int, max_new_tokens: int) -> int:
        room = self.lm.window - prompt_tokens - max_new_tokens - 64  # 64: passage headers
        return max(0, min(self.config.context_budget, room))

    def memory_budget(self) -> int:
        """Most memory slots a compressed answer attends to; 0: no cap (see Config.memory_budget)."""
        if self.config.memory_budget >= 0:
            return self.config.memory_budget
        from uio.model import flat_ttft_slots

        return 0 if self.lm.device.type != "cpu" else flat_ttft_slots(self.lm)

    def ask(self, doc_refs: Sequence[int | str], question: str, history: Sequence[dict] = (),
            conversation_id: int | None = None, max_new_tokens: int | None = None,
            temperature: float = 0.0, stop: threading.Event | None = None,
            mode: str = "uncompressed", ratio: int | None = None, cache_policy: str | None = None,
            cache_eviction: float | None = None) -> Iterator[AnswerUpdate]:
        """Answer ``question`` over the chosen books, streaming; saves both turns to the conversation.

        ``uncompressed``: the books' raw text in the prompt; ``compressed``: the books' stored
        memories in the cache. Either way all of it when it fits the budget, else the segments
        closest to the question with their neighbours (``retrieval.select``); the sources list every
        segment used, best first. ``cache_policy``/``cache_eviction`` prune the recent cache
        (prompt and generated tokens; never the memories), defaulting to the config's.
        """
        from retrieval.prompt import build_messages, count_tokens, fit_budget
        from retrieval.select import select_segments

        timer = Timer()  # stats["timing"]: where the time to the first token went
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        question = question.strip()
        if not question:
            raise ValueError("the question is empty")
        with timer.phase("lookup"):
            docs = [self.store.get_document(r) for r in doc_refs]
        not_ready = [d.title for d in docs if not d.ready]
        if not_ready:
            raise ValueError(f"still being ingested: {', '.join(not_ready)}")
        max_new = max_new_tokens or self.config.max_new_tokens
        lm = self.lm
        policy = self.cache_policy(cache_policy, cache_eviction)
        titles = [d.title for d in docs]
        if mode == "compressed":
            memories = [self.memory(d, ratio, timer=timer) for d in docs]
            with timer.phase("lookup"):
                stored = [self.store.segments(d.id) for d in docs]
            books = [(d.title, [_SlotSegment(s.text, s.page_start, s.page_end, s.index, mem.slots[j])
                                for j, s in enumerate(segs)])
                     for d, mem, segs in zip(docs, memories, stored)]
            bare = count_tokens(lm.tokenizer, build_messages(fit_budget([], 0), question, history,
                                                             memory_of=titles))
            budget = max(0, lm.window - bare - max_new - 16)
            cap = self.memory_budget()
            if cap:  # the question attends to every slot: cap them for a flat TTFT
                budget = min(budget, cap)
        else:
            with timer.phase("lookup"):
                books = [(d.title, self.store.segments(d.id)) for d in docs]
            bare = count_tokens(lm.tokenizer, build_messages(fit_budget([], 0), question, history))
            budget = self.context_budget(bare, max_new)
        with timer.phase("select"):
            scores = self.scores(docs, question)
            selection = select_segments(books, [scores[d.id] for d in docs], budget, self.config.neighbours)
        owner = {id(s): d.id for d, (_, segs) in zip(docs, books) for s in segs}
        sources = _sources(((owner[id(p.segment)], p) for p in selection.passages), question)
        if conversation_id is None:
            conversation_id = self.store.new_conversation(question[:80], [d.id for d in docs])
        self.store.add_message(conversation_id, "user", question)
        update = AnswerUpdate(text="", mode=mode, conversation_id=conversation_id, sources=sources,
                              truncated=selection.truncated, context_tokens=selection.tokens)
        per_token = lm.kv_bytes_per_token
        with self.model_lock:
            from uio.decoder import build_cache
            from uio.generate import stream_chat

            cache, prefix, memory_bytes = None, 0, 0
            if mode == "compressed":
                with timer.phase("assembly"):
                    chosen = [mem.select([p.segment.index for p in selection.passages
                                          if owner[id(p.segment)] == d.id]) for d, mem in zip(docs, memories)]
                    cache, prefix = build_cache(lm, chosen, self.adapter_for(ratio).fingerprint)
                messages = build_messages(fit_budget([], 0), question, history, memory_of=titles)
                memory_bytes = sum(m.nbytes for m in chosen)
            else:
                messages = build_messages(selection, question, history)
            if policy is None:
                gen = stream_chat(lm, messages, max_new_tokens=max_new, temperature=temperature, stop=stop,
                                  past_key_values=cache, prefix_len=prefix)
            else:
                from uio.generate import stream_with_policy

                gen = stream_with_policy(lm, messages, policy, past_key_values=cache, prefix_len=prefix,
                                         max_new_tokens=max_new, temperature=temperature, stop=stop)
            for piece in gen:
                update.text += piece
                yield replace(update)  # a snapshot: consumers may keep earlier updates
        stats = gen.stats
        if policy is not None and stats.kv_bytes_held:
            kv = sum(stats.kv_bytes_held)  # what the policy really held at the end, memories included
        else:
            kv = memory_bytes + (stats.prompt_tokens + stats.new_tokens) * per_token
        update.stats = stats.as_dict() | {"model": lm.name, "context_tokens": selection.tokens, "kv_bytes": kv,
                                          "cache_policy": policy.name if policy is not None else "full"}
        timer.add("prefill", stats.prefill_s)
        timer.add("first_decode", stats.first_decode_s)
        update.stats["timing"] = timer.as_dict() | {
            "ttft_s": round(timer.since_start(stats.first_token_at), 4) if stats.first_token_at else None}
        if mode == "compressed":
            update.stats["adapter_trained"] = self.adapter_trained(ratio)
            update.stats["ratio"] = ratio or self.config.ratio
        update.done = True
        update.text = update.text.strip()
        self.store.add_message(conversation_id, "assistant", update.text, mode=mode,
                               stats=update.stats | {"sources": [s.as_dict() for s in update.sources]})
        yield update
