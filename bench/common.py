"""What every bench script shares: where things live, loading a model the way the app does, writing results.

Scripts run as ``.venv/bin/python bench/<script>.py``; the project is installed editable
(``make install``), so ``bench.common`` and the product packages import without path edits.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / ".cache" / "models"  # prepared copies of the embedded models, shared by all scripts
RESULTS_DIR = ROOT / "bench" / "results"
DOCS_DIR = ROOT / "docs"


def load_model(name: str, device: str = "cpu", dtype: str = "auto", threads: int = 0, tune: bool = True):
    """The base model ``name`` as the app loads it: allocator tuned, ``threads`` intra-op threads (0: torch's)."""
    from uio.model import load_model as load
    from uio.runtime import set_threads, tune_allocator

    if tune:
        tune_allocator()
    set_threads(threads)
    return load(name, MODELS_DIR, device, dtype)


COMPACT_ABOVE = 64_000  # characters: a larger result file is written without indentation


def result_text(payload: Any, indent: int = 1) -> str:
    """A result file's JSON: indented to be read, compact when it would exceed ``COMPACT_ABOVE`` characters
    (per-question runs: the repository's tracked size must stay under the 64 MiB a device run carries)."""
    text = json.dumps(payload, indent=indent)
    return text if len(text) <= COMPACT_ABOVE else json.dumps(payload, separators=(",", ":"))


def write_json(path: Path, payload: Any, indent: int = 1) -> Path:
    """Write a result file (folders made as needed) and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result_text(payload, indent) + "\n")
    try:
        shown = path.relative_to(ROOT)
    except ValueError:
        shown = path
    print(f"wrote {shown}")
    return path


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain-text table of ``rows`` (dicts), columns in the order given (default: the first row's keys)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
