"""Where memory files live under the data dir, their checksums, and what is left over after a crash.

The database is the single source of truth: a memory file is referenced by
a ``memory_sets`` row only after it has been written whole (temporary name,
fsync, rename) and checksummed. Anything else under the root is either an
in-progress part of a document still ``ingesting`` or an orphan.
"""
from __future__ import annotations

import hashlib
import os
import threading
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


# Files whose checksum matched in this process, keyed by what a rewrite changes (path, size, mtime, inode).
# A memory file is never rewritten in place (temporary name + rename gives a new inode), so hashing a
# 200 MB file again on every question buys nothing; the first load of each file still hashes it all.
_VERIFIED: set[tuple] = set()
_VERIFIED_LOCK = threading.Lock()


def _identity(st: os.stat_result, path: Path, sha256: str) -> tuple:
    return (str(path.resolve()), sha256, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def forget_verified() -> None:
    """Forget which files were verified: the next load of each hashes it again."""
    with _VERIFIED_LOCK:
        _VERIFIED.clear()


_PART_SUFFIX = ".safetensors"


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
        return self._stem(doc_sha, fingerprint, ratio) + f".chunk{chunk:05d}{_PART_SUFFIX}"

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def verify(self, rel: str, sha256: str) -> Path:
        """The file's path, once its checksum matches; CorruptMemory otherwise.

        Hashed once per process per file version (see ``_VERIFIED``); later calls only stat it.
        """
        p = self.root / rel
        try:
            st = p.stat()
        except FileNotFoundError:
            st = None
        if st is None or not p.is_file():
            raise CorruptMemory(f"memory file {rel} is missing; re-ingest the document")
        key = _identity(st, p, sha256)
        if key in _VERIFIED:
            return p
        if sha256_file(p) != sha256:
            raise CorruptMemory(f"memory file {rel} is corrupt (checksum mismatch); re-ingest the document")
        with _VERIFIED_LOCK:
            _VERIFIED.add(key)
        return p

    def verified(self, rel: str, sha256: str) -> bool:
        """Whether this version of the file was already hashed and matched in this process."""
        p = self.root / rel
        try:
            return _identity(p.stat(), p, sha256) in _VERIFIED
        except FileNotFoundError:
            return False

    def of_document(self, doc_sha: str) -> list[Path]:
        """Every file (final, chunks, temporaries) belonging to a document."""
        folder = self.root / doc_sha[:2]
        return sorted(folder.glob(f"{doc_sha}-*")) if folder.is_dir() else []

    def remove_parts(self, doc_sha: str, fingerprint: str | None = None, ratio: int | None = None) -> int:
        """Delete a document's chunk files (and their unfinished temporaries) once its complete memory file
        is recorded, or its compression cancelled; only those of ``fingerprint`` at ``ratio`` when given
        (another compressor's job of the same book keeps its chunks). Returns how many were removed."""
        stem = self._stem(doc_sha, fingerprint, ratio).split("/")[-1] + ".chunk" if fingerprint else ".chunk"
        n = 0
        for f in self.of_document(doc_sha):
            if ".chunk" in f.name and stem in f.name and (f.name.endswith(_PART_SUFFIX)
                                                          or f.name.endswith(_PART_SUFFIX + ".part")):
                f.unlink(missing_ok=True)
                n += 1
        return n

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
