"""Vector search over stored embeddings (passages, or whole segments), behind one call: ``VectorSearch.search``.

``kind`` says which vectors: "passages" (what the retriever scores since
passages exist: windows of <= 200 word pieces the embedder reads whole) or
"segments" (one vector per 1,024-token segment, of which the embedder reads
only the first 256 word pieces; kept for comparison and old callers).

Two ways, same answer (the tests check the indexed one against brute force):

- brute force: the chosen documents' embedding matrix (cached per document)
  times the query, top-k in torch. Exact, and fast up to ~10^5 segments
  (10^5 x 384 float32 = 150 MB, one matmul of a few ms).
- above ``index_threshold`` segments on SQLite: a ``sqlite-vec`` ``vec0``
  table in a side file ``<database>.vec`` (partitioned by document), queried
  with a KNN ``MATCH``. It keeps the vectors out of Python's memory.
  sqlite-vec 0.1.9 scans exactly (no approximate index yet), in C, chunk by chunk.
  The side file is only an index: the segments table stays the single source
  of truth, and a document is (re)indexed whenever its sha256, embedder or
  segment count differ from what the side file recorded.

PostgreSQL: ``pgvector`` needs the server extension, which Debian 12's own
archive does not carry (``apt-cache policy postgresql-15-pgvector``: no
candidate), so PostgreSQL libraries use brute force for now; a pgvector
path would slot in here as a third branch of ``search``.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from storage.store import DocumentInfo, Store

log = logging.getLogger("tome.search")

VEC0_MAX_K = 4096  # sqlite-vec refuses larger k


@dataclass(frozen=True)
class Hit:
    document_id: int
    index: int  # segment index (kind "segments") or passage ordinal (kind "passages") within the document
    score: float  # cosine similarity, higher is closer


def topk_brute_force(matrix: np.ndarray | torch.Tensor, query: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """Rows of ``matrix`` (n, d), unit rows, most similar to ``query`` (d,): (row numbers, cosines)."""
    m = torch.as_tensor(matrix, dtype=torch.float32)
    if m.shape[0] == 0 or k <= 0:
        return [], []
    scores = m @ torch.as_tensor(query, dtype=torch.float32)
    top = torch.topk(scores, min(k, m.shape[0]))
    return top.indices.tolist(), top.values.tolist()


KINDS = ("segments", "passages")


class VectorSearch:
    """Top-k segments or passages of some documents for a query vector; see the module docstring for the two paths."""

    def __init__(self, store: Store, index_threshold: int = 100_000, cache_docs: int = 64, kind: str = "segments"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.store = store
        self.kind = kind
        self.index_threshold = index_threshold
        self._matrices: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # (id, sha, embedder) -> (n, d)
        self._cache_docs = cache_docs
        self._lock = threading.Lock()
        self._index: SqliteVecIndex | None = None
        url = store.engine.url
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            self._index_path: Path | None = Path(url.database).with_suffix(Path(url.database).suffix + ".vec")
            if kind == "passages":
                self._index_path = self._index_path.with_suffix(".pvec")
        else:
            self._index_path = None

    def uses_index(self, n_segments: int) -> bool:
        return self._index_path is not None and n_segments > self.index_threshold

    def embedder_of(self, doc: DocumentInfo) -> str | None:
        return doc.passage_embedder if self.kind == "passages" else doc.embedder

    def blobs(self, doc_id: int) -> list[bytes | None]:
        return self.store.passage_embeddings(doc_id) if self.kind == "passages" else self.store.embeddings(doc_id)

    def count(self, doc_ids: Sequence[int]) -> int:
        return self.store.count_passages(doc_ids) if self.kind == "passages" else self.store.count_segments(doc_ids)

    def search(self, query: np.ndarray, docs: Sequence[DocumentInfo], k: int) -> list[Hit]:
        """The ``k`` segments (or passages) of ``docs`` closest to ``query`` (unit float32), best first.

        Every document must carry embeddings of one model (``DocumentInfo.embedder``,
        or ``passage_embedder`` for passages).
        """
        docs = [d for d in docs if self.embedder_of(d)]
        if not docs or k <= 0:
            return []
        n = self.count([d.id for d in docs])
        if self.uses_index(n):
            return self._indexed(query, docs, min(k, VEC0_MAX_K))
        return self._brute_force(query, docs, k)

    # -- brute force -------------------------------------------------------
    def matrix(self, doc: DocumentInfo) -> torch.Tensor:
        key = (doc.id, doc.sha256, self.embedder_of(doc))
        with self._lock:
            if key in self._matrices:
                self._matrices.move_to_end(key)
                return self._matrices[key]
        blobs = self.blobs(doc.id)
        if any(b is None for b in blobs):
            raise ValueError(f"{doc.title!r} has {self.kind} without embeddings")
        m = torch.from_numpy(np.stack([np.frombuffer(b, dtype="<f4") for b in blobs])) if blobs \
            else torch.zeros(0, 0)
        with self._lock:
            self._matrices[key] = m
            while len(self._matrices) > self._cache_docs:
                self._matrices.popitem(last=False)
        return m

    def _brute_force(self, query: np.ndarray, docs: Sequence[DocumentInfo], k: int) -> list[Hit]:
        mats = [self.matrix(d) for d in docs]
        owners = [(d.id, j) for d, m in zip(docs, mats) for j in range(m.shape[0])]
        rows, scores = topk_brute_force(torch.cat([m for m in mats if m.numel()]) if owners else
                                        torch.zeros(0, 0), query, k)
        return [Hit(*owners[r], s) for r, s in zip(rows, scores)]

    # -- sqlite-vec --------------------------------------------------------
    def _indexed(self, query: np.ndarray, docs: Sequence[DocumentInfo], k: int) -> list[Hit]:
        with self._lock:
            if self._index is None:
                self._index = SqliteVecIndex(self._index_path)
            for d in docs:
                self._index.ensure(d, self.blobs(d.id), self.embedder_of(d))
        return self._index.query(query, [d.id for d in docs], k)


class SqliteVecIndex:
    """A ``vec0`` table in a side SQLite file, one partition per document."""

    def __init__(self, path: Path):
        self.path = path

    def _connect(self):
        # The stdlib sqlite3 of some Python builds cannot load extensions; pysqlite3 always can.
        try:
            import pysqlite3 as sqlite3
        except ImportError:  # pragma: no cover - pinned in requirements.txt
            import sqlite3
        import sqlite_vec

        conn = sqlite3.connect(str(self.path))
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("CREATE TABLE IF NOT EXISTS indexed (document_id INTEGER PRIMARY KEY, sha256 TEXT, "
                     "embedder TEXT, n INTEGER, dim INTEGER)")
        return conn

    def ensure(self, doc: DocumentInfo, blobs: Sequence[bytes], embedder: str | None) -> None:
        """Index ``doc``'s vectors ``blobs`` unless the side file already holds exactly these."""
        dim = len(blobs[0]) // 4 if blobs and blobs[0] else 0
        conn = self._connect()
        try:
            row = conn.execute("SELECT sha256, embedder, n, dim FROM indexed WHERE document_id = ?",
                               (doc.id,)).fetchone()
            if row == (doc.sha256, embedder, len(blobs), dim):
                return
            dims = {r[0] for r in conn.execute("SELECT dim FROM indexed")}
            with conn:
                if dims and dims != {dim}:  # another embedder size: the table's vector type changes
                    conn.execute("DROP TABLE IF EXISTS vec_segments")
                    conn.execute("DELETE FROM indexed")
                conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS vec_segments USING vec0("
                             f"document_id INTEGER PARTITION KEY, embedding float[{dim}] distance_metric=cosine, "
                             f"+idx INTEGER)")
                conn.execute("DELETE FROM vec_segments WHERE document_id = ?", (doc.id,))
                conn.executemany("INSERT INTO vec_segments(document_id, embedding, idx) VALUES (?, ?, ?)",
                                 [(doc.id, b, j) for j, b in enumerate(blobs)])
                conn.execute("INSERT OR REPLACE INTO indexed VALUES (?, ?, ?, ?, ?)",
                             (doc.id, doc.sha256, embedder, len(blobs), dim))
            log.info("vector index: %s (%d vectors) indexed", doc.title, len(blobs))
        finally:
            conn.close()

    def query(self, query: np.ndarray, doc_ids: Sequence[int], k: int) -> list[Hit]:
        conn = self._connect()
        try:
            marks = ",".join("?" * len(doc_ids))
            # With a partition key in IN (...), vec0 returns k rows per partition: merge and cut here.
            rows = conn.execute(f"SELECT document_id, idx, distance FROM vec_segments WHERE embedding MATCH ? "
                                f"AND k = ? AND document_id IN ({marks})",
                                (np.ascontiguousarray(query, dtype="<f4").tobytes(), k, *doc_ids)).fetchall()
        finally:
            conn.close()
        hits = sorted((Hit(d, i, 1.0 - dist) for d, i, dist in rows), key=lambda h: -h.score)
        return hits[:k]
