"""SQLAlchemy 2.0 ORM tables. The database is the single source of truth for what is stored."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Document(Base):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    title: Mapped[str] = mapped_column(String(500))
    filename: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(16), default="pdf")
    extractor: Mapped[str] = mapped_column(String(32), default="")  # which text extractor read it
    pages: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    # ingesting: rows exist but memories are not complete (never offered for questions);
    # ready: everything is stored and checksummed.
    status: Mapped[str] = mapped_column(String(16), default="ingesting")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the sentence-transformers model that made the segments' embeddings (vectors of
    # different models are never compared); NULL: not embedded yet
    embedder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # the embedder whose tokenizer cut the passages and which made their vectors; NULL: no passages yet
    passage_embedder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    segments: Mapped[list["Segment"]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True,
        order_by="Segment.idx")
    memory_sets: Mapped[list["MemorySet"]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True)
    passages: Mapped[list["Passage"]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True,
        order_by="Passage.idx")


class Segment(Base):
    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("document_id", "idx"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    page_start: Mapped[int] = mapped_column(Integer)
    page_end: Mapped[int] = mapped_column(Integer)
    token_start: Mapped[int] = mapped_column(Integer)
    token_end: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # for retrieval

    document: Mapped[Document] = relationship(back_populates="segments")


class Passage(Base):
    """A window of at most 200 word pieces of a segment, on one page: what retrieval scores and cites.

    Indexed for full-text search outside the ORM (migration 0003): an FTS5 table
    ``passages_fts`` on SQLite; on PostgreSQL a generated column ``tsv``
    (``to_tsvector('english', text)``) with a GIN index ``ix_passages_tsv``.
    """

    __tablename__ = "passages"
    __table_args__ = (UniqueConstraint("document_id", "idx"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)  # ordinal within the document
    segment_idx: Mapped[int] = mapped_column(Integer)
    page: Mapped[int] = mapped_column(Integer)
    char_start: Mapped[int] = mapped_column(Integer)  # span within the segment's text
    char_end: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)

    document: Mapped[Document] = relationship(back_populates="passages")


# Full-text index objects made by migration 0003 with raw DDL, which the ORM does not model:
# autogenerate comparisons (storage/migrations/env.py, tests) leave them out.
FULL_TEXT_NAMES = ("passages_fts", "ix_passages_tsv")


def include_name(name, type_, parent_names) -> bool:
    if type_ == "column" and name == "tsv" and (parent_names or {}).get("table_name") == "passages":
        return False
    return not (name or "").startswith(FULL_TEXT_NAMES)


class MemorySet(Base):
    """The memories of one document made by one compressor of one model: a safetensors file under the data dir."""

    __tablename__ = "memory_sets"
    __table_args__ = (UniqueConstraint("document_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # identity of compressor + model (uio.compress.identity)
    ratio: Mapped[int] = mapped_column(Integer)
    # Which compressor made them, with its parameters and version (rows before 0004: the UIO encoder).
    compressor: Mapped[str] = mapped_column(String(32), default="uio", server_default="uio")
    params: Mapped[dict | None] = mapped_column(JSON, nullable=True, default=dict)
    path: Mapped[str] = mapped_column(String(1000))  # relative to the memory root
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    document: Mapped[Document] = relationship(back_populates="memory_sets")


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    document_ids: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    messages: Mapped[list["Message"]] = relationship(
        back_populates="conversation", cascade="all, delete-orphan", passive_deletes=True,
        order_by="Message.id")


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # user | assistant
    content: Mapped[str] = mapped_column(Text)
    mode: Mapped[str | None] = mapped_column(String(16), nullable=True)  # uncompressed | compressed
    stats: Mapped[dict] = mapped_column(JSON, default=dict)  # time to first token, tok/s, pages, ...
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class CompressionJob(Base):
    """Stage 2 of one document: making its memories with one compressor at one ratio, in the background.

    A persisted queue (migration 0005): a worker claims the oldest ``queued`` row (``storage.jobs``), saves
    a chunk file per few segments and bumps ``updated_at`` as it goes, so a job whose worker died is seen
    (stale ``updated_at``, or a dead local process) and queued again; it resumes from the saved chunks.
    """

    __tablename__ = "compression_jobs"
    __table_args__ = (UniqueConstraint("document_id", "compressor", "ratio"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    compressor: Mapped[str] = mapped_column(String(32))  # a name of uio.compress.COMPRESSORS ("auto" resolved)
    ratio: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued|running|done|failed|cancelled
    segments_done: Mapped[int] = mapped_column(Integer, default=0)
    segments_total: Mapped[int] = mapped_column(Integer)
    done_at_claim: Mapped[int] = mapped_column(Integer, default=0)  # segments_done when claimed: the rate's base
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far: a job that kills its worker stops
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)  # "host:pid:tag" of the claimer
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
