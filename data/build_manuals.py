"""Build a corpus of PDF manuals as Tome reads them, for the kvzip-fast scorer (``python -m uio.train.scorer``).

    python data/build_manuals.py [--out data/manuals] [--pages 8]

The prose corpus (``data/build_corpus.py``) drops code, tables and lists; a book a user uploads keeps them, and
the scorer that predicts KVzip's choice on such pages never saw one. This corpus is PDF manuals from Debian
packages (``apt-get download`` + ``dpkg-deb -x``, as build_corpus does), read page by page by Tome's own PDF
reader (``ingest.pages.read_document``), cut into documents of ``--pages`` pages. Never the manuals the
real-document questions ask about (``bench/qa/realdocs.json``: R-intro, R-data, R-admin, R-FAQ, bashref,
asymptote, gnuplot): those are refused by name. One manual is held out whole (R-lang) for the agreement figure.

Output (under --out, ignored by git): train.jsonl, heldout.jsonl ({"id", "source", "title", "text"} per line)
and manifest.json (packages and versions, pages and characters per manual, seconds).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from data.build_corpus import Source, fetch  # noqa: E402

# (package, PDF inside it, licence); the held-out manual last.
MANUALS = [
    ("r-doc-pdf", "usr/share/R/doc/manual/R-exts.pdf", "GPL-2+"),
    ("r-doc-pdf", "usr/share/R/doc/manual/R-ints.pdf", "GPL-2+"),
    ("octave-doc", "usr/share/doc/octave/octave.pdf", "GPL-3+"),
    ("octave-doc", "usr/share/doc/octave/liboctave.pdf", "GPL-3+"),
    ("libtasn1-doc", "usr/share/doc/libtasn1-doc/libtasn1.pdf", "GFDL-1.3+"),
    ("r-doc-pdf", "usr/share/R/doc/manual/R-lang.pdf", "GPL-2+"),
]
HELDOUT = {"R-lang.pdf"}


def evaluated_names() -> set[str]:
    """File names of the PDFs the real-document questions ask about: never training data."""
    data = json.loads((ROOT / "bench" / "qa" / "realdocs.json").read_text())
    return {Path(d["path"]).name for d in data["documents"]}


def documents(pdf: Path, pages_per_doc: int) -> list[dict]:
    """The manual's pages (Tome's reader), ``pages_per_doc`` pages a document."""
    from ingest.pages import read_document

    pages = [p for p in read_document(pdf).pages if p.text.strip()]
    out = []
    for i in range(0, len(pages), pages_per_doc):
        chunk = pages[i:i + pages_per_doc]
        out.append({"id": f"{pdf.stem}/p{chunk[0].number}", "source": pdf.stem,
                    "title": f"{pdf.stem} pages {chunk[0].number}-{chunk[-1].number}",
                    "text": "\n\n".join(p.text for p in chunk)})
    return out


def build(out: Path, pages_per_doc: int, work: Path) -> dict:
    banned = evaluated_names()
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pages_per_document": pages_per_doc,
                      "heldout": sorted(HELDOUT), "never": sorted(banned), "manuals": []}
    trees: dict[str, tuple[Path, dict]] = {}
    with open(out / "train.jsonl", "w", encoding="utf-8") as tr, open(out / "heldout.jsonl", "w", encoding="utf-8") as ho:
        for package, rel, licence in MANUALS:
            name = Path(rel).name
            if name in banned:
                raise ValueError(f"{name} is a document the real-document questions ask about: not training data")
            t0 = time.time()
            if package not in trees:
                src = Source(package, "deb", (package,), licence, lambda root: iter(()))
                trees[package] = (fetch(src, work), src.versions)
            root, versions = trees[package]
            docs = documents(root / rel, pages_per_doc)
            split = ho if name in HELDOUT else tr
            for d in docs:
                split.write(json.dumps(d, ensure_ascii=False) + "\n")
            entry = {"pdf": name, "package": package, "versions": versions, "licence": licence,
                     "split": "heldout" if name in HELDOUT else "train", "documents": len(docs),
                     "characters": sum(len(d["text"]) for d in docs), "seconds": round(time.time() - t0, 1)}
            manifest["manuals"].append(entry)
            print(f"{name:16s} {entry['split']:8s} {len(docs):4d} docs {entry['characters'] / 1e6:6.2f} MB "
                  f"({entry['seconds']} s)", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "manuals")
    ap.add_argument("--pages", type=int, default=8, help="pages per document (the scorer takes <= 2 segments each)")
    ap.add_argument("--work", type=Path, default=None, help="where packages are unpacked (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.work:
        build(args.out, args.pages, args.work)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build(args.out, args.pages, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
