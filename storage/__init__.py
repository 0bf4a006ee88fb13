"""The store: documents, segments and conversations in a SQL database (SQLite by default)."""
from storage.files import CorruptMemory, MemoryFiles
from storage.jobs import JobInfo
from storage.records import (ConversationInfo, DocumentInfo, MemorySetInfo, MessageRecord, NotFound,
                             PassageRecord, SegmentRecord, TextHit)
from storage.store import Store

__all__ = ["Store", "DocumentInfo", "SegmentRecord", "ConversationInfo", "MessageRecord", "NotFound",
           "MemorySetInfo", "MemoryFiles", "CorruptMemory", "PassageRecord", "TextHit", "JobInfo"]
