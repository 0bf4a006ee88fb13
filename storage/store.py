"""The Store: every read and write of documents, segments, passages, memory sets and conversations.

Callers get plain frozen dataclasses, never ORM objects, so nothing outside
this package holds a database session or imports SQLAlchemy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from sqlalchemy import bindparam, create_engine, delete, event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from storage import fulltext, migrate
from storage.jobs import JobStore
from storage.records import (NotFound, SegmentLike, DocumentInfo, SegmentRecord, PassageRecord, PassageLike, TextHit, MemorySetInfo, ConversationInfo, MessageRecord, _doc_info, _memset_info)
from storage.schema import Conversation, Document, MemorySet, Message, Passage, Segment


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the UI read while an ingestion writes; the busy timeout makes a
    # writer wait for the lock instead of failing; SQLite ignores FKs unless asked.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Store(JobStore):
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        migrate.upgrade(self.engine)  # the schema always comes from the migrations
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- documents ---------------------------------------------------------
    def find_by_sha(self, sha256: str) -> DocumentInfo | None:
        with self._session() as s:
            d = s.scalar(select(Document).where(Document.sha256 == sha256))
            return _doc_info(d) if d else None

    def begin_document(self, *, sha256: str, title: str, filename: str, kind: str, pages: int,
                       segments: Sequence[SegmentLike], extractor: str = "",
                       embeddings: Sequence[bytes] | None = None, embedder: str | None = None) -> DocumentInfo:
        """Store a document and all its segments in one transaction, status ``ingesting``.

        ``embeddings`` (one blob per segment, made by ``embedder``) are stored with the segments.
        It is offered for questions only once ``finish_document`` marks it ready.
        """
        if embeddings is not None and len(embeddings) != len(segments):
            raise ValueError(f"{len(embeddings)} embeddings for {len(segments)} segments")
        tokens = segments[-1].token_end if segments else 0
        vecs = list(embeddings) if embeddings is not None else [None] * len(segments)
        with self._session.begin() as s:
            d = Document(sha256=sha256, title=title, filename=filename, kind=kind, pages=pages,
                         tokens=tokens, status="ingesting", extractor=extractor,
                         embedder=embedder if embeddings is not None else None)
            d.segments = [Segment(idx=g.index, text=g.text, page_start=g.page_start, page_end=g.page_end,
                                  token_start=g.token_start, token_end=g.token_end, embedding=v)
                          for g, v in zip(segments, vecs)]
            s.add(d)
            s.flush()
            return _doc_info(d)

    def finish_document(self, doc_id: int, memory: MemorySetInfo | None = None) -> DocumentInfo:
        """Record the (whole, checksummed) memory file and mark the document ready, atomically."""
        with self._session.begin() as s:
            d = s.get(Document, doc_id)
            if d is None:
                raise NotFound(f"no document with id {doc_id}")
            if memory is not None:
                old = s.scalar(select(MemorySet).where(MemorySet.document_id == doc_id,
                                                       MemorySet.fingerprint == memory.fingerprint))
                if old is not None:
                    s.delete(old)
                    s.flush()
                s.add(MemorySet(document_id=doc_id, fingerprint=memory.fingerprint, ratio=memory.ratio,
                                path=memory.path, bytes=memory.bytes, sha256=memory.sha256,
                                compressor=memory.compressor, params=memory.params))
            d.status, d.error = "ready", None
            s.flush()
            return _doc_info(d)

    def add_document(self, **kwargs) -> DocumentInfo:
        """Store a document with no memories and mark it ready (uncompressed use only)."""
        doc = self.begin_document(**kwargs)
        return self.finish_document(doc.id)

    def unfinished_documents(self) -> list[DocumentInfo]:
        with self._session() as s:
            return [_doc_info(d) for d in s.scalars(select(Document).where(Document.status != "ready"))]

    def memory_set(self, doc_id: int, fingerprint: str) -> MemorySetInfo | None:
        with self._session() as s:
            m = s.scalar(select(MemorySet).where(MemorySet.document_id == doc_id,
                                                 MemorySet.fingerprint == fingerprint))
            return _memset_info(m) if m else None

    def memory_sets(self, doc_id: int | None = None) -> list[MemorySetInfo]:
        with self._session() as s:
            q = select(MemorySet).order_by(MemorySet.id)
            if doc_id is not None:
                q = q.where(MemorySet.document_id == doc_id)
            return [_memset_info(m) for m in s.scalars(q)]

    def list_documents(self) -> list[DocumentInfo]:
        with self._session() as s:
            return [_doc_info(d) for d in s.scalars(select(Document).order_by(Document.id))]

    def get_document(self, ref: int | str) -> DocumentInfo:
        """A document by id, or by exact (then case-insensitive) title or filename."""
        with self._session() as s:
            if isinstance(ref, int) or str(ref).isdigit():
                d = s.get(Document, int(ref))
                if d:
                    return _doc_info(d)
            ref = str(ref)
            for cond in (Document.title == ref, Document.filename == ref,
                         func.lower(Document.title) == ref.lower()):
                d = s.scalars(select(Document).where(cond).order_by(Document.id)).first()
                if d:
                    return _doc_info(d)
        raise NotFound(f"no document {ref!r} in the library")

    def delete_document(self, doc_id: int) -> None:
        with self._session.begin() as s:
            d = s.get(Document, doc_id)
            if d is None:
                raise NotFound(f"no document with id {doc_id}")
            s.delete(d)
            # SQLite may give a deleted document's id to the next one: conversations must not
            # point at a book they never discussed.
            for c in s.scalars(select(Conversation)):
                if doc_id in (c.document_ids or []):
                    c.document_ids = [i for i in c.document_ids if i != doc_id]

    def delete_memory_set(self, doc_id: int, fingerprint: str) -> None:
        with self._session.begin() as s:
            m = s.scalar(select(MemorySet).where(MemorySet.document_id == doc_id,
                                                 MemorySet.fingerprint == fingerprint))
            if m is not None:
                s.delete(m)

    def segments(self, doc_id: int) -> list[SegmentRecord]:
        with self._session() as s:
            rows = s.scalars(select(Segment).where(Segment.document_id == doc_id).order_by(Segment.idx))
            return [SegmentRecord(r.document_id, r.idx, r.text, r.page_start, r.page_end, r.token_start,
                                  r.token_end) for r in rows]

    def embeddings(self, doc_id: int) -> list[bytes | None]:
        """The stored embedding of each segment, in document order (None where there is none)."""
        with self._session() as s:
            return list(s.scalars(select(Segment.embedding).where(Segment.document_id == doc_id)
                                  .order_by(Segment.idx)))

    def set_embeddings(self, doc_id: int, embedder: str, embeddings: Sequence[bytes]) -> DocumentInfo:
        """Replace all of a document's segment embeddings (made by ``embedder``), atomically."""
        with self._session.begin() as s:
            d = s.get(Document, doc_id)
            if d is None:
                raise NotFound(f"no document with id {doc_id}")
            if len(embeddings) != len(d.segments):
                raise ValueError(f"{len(embeddings)} embeddings for {len(d.segments)} segments")
            for seg, v in zip(d.segments, embeddings):
                seg.embedding = v
            d.embedder = embedder
            s.flush()
            return _doc_info(d)

    # -- passages ----------------------------------------------------------
    def set_passages(self, doc_id: int, embedder: str, passages: Sequence[PassageLike],
                     embeddings: Sequence[bytes] | None = None) -> DocumentInfo:
        """Replace all of a document's passages (cut and embedded by ``embedder``), atomically."""
        if embeddings is not None and len(embeddings) != len(passages):
            raise ValueError(f"{len(embeddings)} embeddings for {len(passages)} passages")
        vecs = list(embeddings) if embeddings is not None else [None] * len(passages)
        with self._session.begin() as s:
            d = s.get(Document, doc_id)
            if d is None:
                raise NotFound(f"no document with id {doc_id}")
            s.execute(delete(Passage).where(Passage.document_id == doc_id))
            s.add_all([Passage(document_id=doc_id, idx=p.index, segment_idx=p.segment, page=p.page,
                               char_start=p.start, char_end=p.end, text=p.text, embedding=v)
                       for p, v in zip(passages, vecs)])
            d.passage_embedder = embedder
            s.flush()
            return _doc_info(d)

    def passages(self, doc_id: int) -> list[PassageRecord]:
        with self._session() as s:
            rows = s.execute(select(Passage.document_id, Passage.idx, Passage.segment_idx, Passage.page,
                                    Passage.char_start, Passage.char_end, Passage.text)
                             .where(Passage.document_id == doc_id).order_by(Passage.idx))
            return [PassageRecord(*r) for r in rows]

    def passage_embeddings(self, doc_id: int) -> list[bytes | None]:
        """The stored vector of each passage, in document order."""
        with self._session() as s:
            return list(s.scalars(select(Passage.embedding).where(Passage.document_id == doc_id)
                                  .order_by(Passage.idx)))

    def count_passages(self, doc_ids: Iterable[int] | None = None) -> int:
        q = select(func.count(Passage.id))
        if doc_ids is not None:
            q = q.where(Passage.document_id.in_(list(doc_ids)))
        with self._session() as s:
            return s.scalar(q) or 0

    def search_text(self, doc_ids: Sequence[int], query: str, k: int = 50) -> list[TextHit]:
        """The ``k`` passages of ``doc_ids`` that best match ``query`` by full text, best first.

        SQLite: FTS5's BM25; PostgreSQL: the same BM25 over the ``tsv`` column's lexemes
        (``storage.fulltext.POSTGRES_BM25``; see that module for how user text is quoted).
        Other databases: [].
        """
        doc_ids = list(doc_ids)
        if not doc_ids or k <= 0 or not query.strip():
            return []
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            match = fulltext.fts5_query(query)
            if not match:
                return []
            sql = text("SELECT p.document_id, p.idx, -bm25(passages_fts) AS score FROM passages_fts "
                       "JOIN passages p ON p.id = passages_fts.rowid "
                       "WHERE passages_fts MATCH :q AND p.document_id IN :ids "
                       "ORDER BY bm25(passages_fts) LIMIT :k")
            params = {"q": match, "ids": doc_ids, "k": k}
        elif dialect == "postgresql":
            if not fulltext.terms(query):
                return []
            sql = text(fulltext.POSTGRES_BM25)
            params = {"q": query, "ids": doc_ids, "k": k, "k1": fulltext.BM25_K1, "b": fulltext.BM25_B}
        else:
            return []
        sql = sql.bindparams(bindparam("ids", expanding=True))
        with self.engine.connect() as conn:
            return [TextHit(int(d), int(i), float(sc)) for d, i, sc in conn.execute(sql, params)]

    def segment_ids(self, doc_id: int) -> list[int]:
        """Row ids of a document's segments, in document order (keys of the vector index)."""
        with self._session() as s:
            return list(s.scalars(select(Segment.id).where(Segment.document_id == doc_id).order_by(Segment.idx)))

    def count_segments(self, doc_ids: Iterable[int] | None = None) -> int:
        q = select(func.count(Segment.id))
        if doc_ids is not None:
            q = q.where(Segment.document_id.in_(list(doc_ids)))
        with self._session() as s:
            return s.scalar(q) or 0

    # -- conversations -----------------------------------------------------
    def new_conversation(self, title: str, document_ids: Iterable[int], question: str | None = None) -> int:
        """A new conversation's id; ``question``: its first message (the user's), saved in the same transaction
        (one commit before a first answer, not two)."""
        with self._session.begin() as s:
            c = Conversation(title=title[:200], document_ids=list(document_ids))
            s.add(c)
            s.flush()
            if question is not None:
                s.add(Message(conversation_id=c.id, role="user", content=question, mode=None, stats={}))
            return c.id

    def add_message(self, conversation_id: int, role: str, content: str, mode: str | None = None,
                    stats: dict | None = None) -> None:
        with self._session.begin() as s:
            if s.get(Conversation, conversation_id) is None:
                raise NotFound(f"no conversation with id {conversation_id}")
            s.add(Message(conversation_id=conversation_id, role=role, content=content, mode=mode,
                          stats=stats or {}))

    def list_conversations(self) -> list[ConversationInfo]:
        with self._session() as s:
            rows = s.scalars(select(Conversation).order_by(Conversation.id.desc()))
            return [ConversationInfo(c.id, c.title, list(c.document_ids), c.created_at) for c in rows]

    def messages(self, conversation_id: int) -> list[MessageRecord]:
        with self._session() as s:
            rows = s.scalars(select(Message).where(Message.conversation_id == conversation_id)
                             .order_by(Message.id))
            return [MessageRecord(m.role, m.content, m.mode, dict(m.stats or {})) for m in rows]
