"""What the store hands out: plain frozen records (never ORM objects), and the protocols it accepts."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from storage.schema import Document, MemorySet


class NotFound(LookupError):
    """No document or conversation matches; the message names what was asked for."""


class SegmentLike(Protocol):
    index: int
    text: str
    page_start: int
    page_end: int
    token_start: int
    token_end: int


@dataclass(frozen=True)
class DocumentInfo:
    id: int
    sha256: str
    title: str
    filename: str
    kind: str
    pages: int
    tokens: int
    status: str
    error: str | None
    created_at: datetime
    extractor: str = ""
    embedder: str | None = None  # model of the stored segment embeddings; None: not embedded
    passage_embedder: str | None = None  # model that cut and embedded the passages; None: no passages

    @property
    def ready(self) -> bool:
        return self.status == "ready"


@dataclass(frozen=True)
class SegmentRecord:
    document_id: int
    index: int
    text: str
    page_start: int
    page_end: int
    token_start: int
    token_end: int

    @property
    def n_tokens(self) -> int:
        return self.token_end - self.token_start


@dataclass(frozen=True)
class PassageRecord:
    """A passage of a segment (<= 200 word pieces of the embedder, one page); span within the segment's text."""

    document_id: int
    index: int  # ordinal within the document
    segment: int
    page: int
    start: int
    end: int
    text: str


class PassageLike(Protocol):
    index: int
    segment: int
    page: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class TextHit:
    """A passage found by full-text search: higher score is better (BM25 on SQLite, ts_rank_cd on PostgreSQL)."""

    document_id: int
    index: int  # the passage's ordinal within its document
    score: float


@dataclass(frozen=True)
class MemorySetInfo:
    document_id: int
    fingerprint: str
    ratio: int
    path: str  # relative to the memory root (storage.files.MemoryFiles)
    bytes: int
    sha256: str
    compressor: str = "uio"  # the method that made them (uio.compress.COMPRESSORS)
    params: dict = field(default_factory=dict)  # its parameters and version


@dataclass(frozen=True)
class ConversationInfo:
    id: int
    title: str
    document_ids: list[int]
    created_at: datetime


@dataclass(frozen=True)
class MessageRecord:
    role: str
    content: str
    mode: str | None
    stats: dict


def _doc_info(d: Document) -> DocumentInfo:
    return DocumentInfo(d.id, d.sha256, d.title, d.filename, d.kind, d.pages, d.tokens, d.status,
                        d.error, d.created_at, d.extractor, d.embedder, d.passage_embedder)


def _memset_info(m: MemorySet) -> MemorySetInfo:
    return MemorySetInfo(m.document_id, m.fingerprint, m.ratio, m.path, m.bytes, m.sha256, m.compressor,
                         dict(m.params or {}))
