"""Where memory files live under the data dir, their checksums, and what is left over after a crash.

The database is the single source of truth: a memory file is referenced by
a ``memory_sets`` row only after it has been written whole (temporary name,
fsync, rename) and checksummed. Anything else under the root is either an
in-progress part of a document still ``ingesting`` or an orphan.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


class CorruptMemory(RuntimeError):
    """A memory file is missing or does not match its checksum; the document must be re-ingested."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class MemoryFiles:
    root: Path

    def _stem(self, doc_sha: str, fingerprint: str, ratio: int) -> str:
        return f"{doc_sha[:2]}/{doc_sha}-{fingerprint[:16]}-{ratio}x"

    def final(self, doc_sha: str, fingerprint: str, ratio: int) -> str:
        """Relative path of a document's complete memory file."""
        return self._stem(doc_sha, fingerprint, ratio) + ".safetensors"

    def part(self, doc_sha: str, fingerprint: str, ratio: int, chunk: int) -> str:
        """Relative path of one compressed chunk of a document still being ingested."""
        return self._stem(doc_sha, fingerprint, ratio) + f".chunk{chunk:05d}.safetensors"

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def verify(self, rel: str, sha256: str) -> Path:
        """The file's path, once its checksum matches; CorruptMemory otherwise."""
        p = self.root / rel
        if not p.is_file():
            raise CorruptMemory(f"memory file {rel} is missing; re-ingest the document")
        if sha256_file(p) != sha256:
            raise CorruptMemory(f"memory file {rel} is corrupt (checksum mismatch); re-ingest the document")
        return p

    def of_document(self, doc_sha: str) -> list[Path]:
        """Every file (final, chunks, temporaries) belonging to a document."""
        folder = self.root / doc_sha[:2]
        return sorted(folder.glob(f"{doc_sha}-*")) if folder.is_dir() else []

    def remove_document(self, doc_sha: str) -> int:
        files = self.of_document(doc_sha)
        for f in files:
            f.unlink(missing_ok=True)
        return len(files)

    def orphans(self, referenced: Iterable[str], in_progress: Iterable[str]) -> list[Path]:
        """Files neither referenced by a row nor belonging to a document still being ingested."""
        keep = {str(self.root / r) for r in referenced}
        busy = tuple(f"{sha}-" for sha in in_progress)
        if not self.root.is_dir():
            return []
        return [p for p in sorted(self.root.rglob("*"))
                if p.is_file() and str(p) not in keep and not p.name.startswith(busy or ("\0",))]
