"""The originals of ingested files, kept under ``data_dir/uploads/<sha256><suffix>`` so they can be read again."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable


class Uploads:
    """One folder of kept originals, named by content hash (the one place that knows the naming rule)."""

    def __init__(self, root: Path):
        self.root = root

    def keep(self, path: Path, sha: str, suffix: str) -> Path:
        """Copy the original out of any temporary upload folder (written whole, then renamed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.root / f"{sha}{suffix.lower()}"
        if not dest.is_file():
            tmp = dest.with_name(dest.name + ".part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        return dest

    def find(self, sha: str) -> Path | None:
        """The kept original of a document, if it is whole."""
        found = next(iter(sorted(self.root.glob(f"{sha}.*"))), None) if self.root.is_dir() else None
        return None if found is None or found.name.endswith(".part") else found

    def drop(self, sha: str | None) -> None:
        if sha and self.root.is_dir():
            for f in self.root.glob(f"{sha}.*"):
                f.unlink(missing_ok=True)

    def orphans(self, known: Iterable[str]) -> list[Path]:
        """Kept files of documents the library no longer has."""
        known = set(known)
        if not self.root.is_dir():
            return []
        return [f for f in self.root.iterdir() if f.is_file() and f.name.split(".")[0] not in known]
