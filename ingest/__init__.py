"""File -> pages -> segments. Nothing here knows about models' weights or the store."""
from ingest.errors import IngestError
from ingest.pages import Extracted, Page, read_document
from ingest.segments import Segment, split_segments

__all__ = ["IngestError", "Extracted", "Page", "read_document", "Segment", "split_segments"]
