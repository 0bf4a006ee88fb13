"""The store: documents, segments and conversations in a SQL database (SQLite by default)."""
from storage.store import (ConversationInfo, DocumentInfo, MessageRecord, NotFound, SegmentRecord,
                           Store)

__all__ = ["Store", "DocumentInfo", "SegmentRecord", "ConversationInfo", "MessageRecord", "NotFound"]
