"""Real hard PDFs from the test resources that ship in pypdf's and pikepdf's sdists.

Fetched once with `pip download --no-binary :all:` (PyPI is reachable on every
machine of this project, CI included) and cached under .cache/pdf-corpus.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "pdf-corpus"
SDISTS = {"pypdf": "7.1.0", "pikepdf": "10.18.0"}
WANTED = ("/resources/", "/tests/resources/")


def corpus() -> Path:
    """Folder with <package>/<relative path>.pdf files; downloads and unpacks on first use."""
    done = CACHE / ".complete"
    if done.is_file():
        return CACHE
    CACHE.mkdir(parents=True, exist_ok=True)
    for name, version in SDISTS.items():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", str(CACHE / "sdists"), f"{name}=={version}"], check=True, timeout=600)
        sdist = next((CACHE / "sdists").glob(f"{name}-{version}.tar.gz"))
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith(".pdf") and any(w in member.name for w in WANTED):
                    rel = member.name.split("/", 1)[1]
                    target = CACHE / name / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
    done.touch()
    return CACHE


def pdf(package: str, rel: str) -> Path:
    return corpus() / package / rel
