"""Real-document question set: PDF manuals shipped by Debian packages, questions with gold pages.

    python bench/qa/realdocs.py --check      # sha256 of every PDF + every answer on its gold page
    python bench/qa/realdocs.py --install    # apt-get install the packages when PDFs are missing

The set lives in realdocs.json (schema in bench/qa/README.md). Page numbers are 1-based, as
``ingest.read_document`` numbers them, and the checker reads the pages through that function.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from bench.qa.grading import contains, grade as _grade, normalize, tokens

HERE = Path(__file__).resolve().parent
SET_PATH = HERE / "realdocs.json"


def load(path: str | Path = SET_PATH, batches: Iterable[int] | None = None) -> dict:
    """The set; with ``batches``, only the questions of those batches (a question's ``batch``, 1 when
    absent: the first 66; batch 2 was added later, so figures measured on batch 1 stay reproducible)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if batches is not None:
        keep = set(batches)
        data["questions"] = [q for q in data["questions"] if q.get("batch", 1) in keep]
    return data


def parse_batches(text: str) -> list[int] | None:
    """``--batches`` of the benches: "1", "1,2" or "all" (None)."""
    return None if text == "all" else [int(b) for b in text.split(",")]


def grade(answer_text: str, question: dict) -> bool:
    """True when ``answer_text`` contains an acceptable answer (for two-book questions: one for each
    book), compared case-, whitespace- and punctuation-insensitively, numbers exactly."""
    return _grade(answer_text, question)


def documents(data: dict | None = None) -> dict[str, dict]:
    data = data or load()
    return {d["id"]: d for d in data["documents"]}


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def missing_packages(data: dict | None = None) -> list[str]:
    data = data or load()
    return sorted({d["package"] for d in data["documents"] if not Path(d["path"]).is_file()})


def ensure_packages(data: dict | None = None) -> list[str]:
    """apt-get install the Debian packages whose PDFs are missing; returns the packages installed.
    Raises RuntimeError with the command to run when not root (or apt-get is absent)."""
    packages = missing_packages(data)
    if not packages:
        return []
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"PDFs missing and no apt-get here; install the Debian packages {' '.join(packages)}")
    if os.geteuid() != 0:
        raise RuntimeError("PDFs missing; installing their packages needs root. Run:\n"
                           f"  sudo apt-get update && sudo {' '.join(command)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(command, env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(command, env=env, check=True)
    still = missing_packages(data)
    if still:
        raise RuntimeError(f"installed {' '.join(packages)} but PDFs are still missing from {' '.join(still)}")
    return packages


def read_pages(path: str | Path) -> dict[int, str]:
    """Page number -> text, through the product's reader."""
    from ingest import read_document

    return {p.number: p.text for p in read_document(path).pages}


_PAGE_CACHE: dict[str, dict[int, str]] = {}  # path -> its pages' text (a manual is read once per process)


def gold_context(question: dict, docs: dict, tokenizer, paths: dict | None = None):
    """The question's gold page(s), each whole, as uncompressed mode's context (``tome.answer.Context``): what the
    reader answers with the answer's page, and nothing else, in front of it (the benches' ceiling).
    ``docs``: manual id -> its ``DocumentInfo`` in the library; ``paths``: manual id -> its PDF (the set's own
    by default)."""
    from retrieval.narrow import PageText
    from retrieval.prompt import Passage, Selection
    from tome.answer import Context

    paths = paths or {k: d["path"] for k, d in documents().items()}
    passages, owner = [], {}
    for g in question["gold"]:
        path = str(paths[g["doc"]])
        if path not in _PAGE_CACHE:
            _PAGE_CACHE[path] = read_pages(path)
        text = _PAGE_CACHE[path][g["page"]]
        seg = PageText(text, g["page"], g["page"], -1, len(tokenizer(text)["input_ids"]))
        passages.append(Passage(docs[g["doc"]].title, seg, 1.0, breaks=((0, g["page"]),)))
        owner[id(seg)] = docs[g["doc"]].id
    return Context(Selection(passages, []), owner)


def check(data: dict | None = None, out=sys.stdout) -> int:
    """Verify hashes, page counts and that every question's answers are on its gold pages.
    Prints a table; returns the number of failures."""
    data = data or load()
    failures = 0
    docs = documents(data)
    pages: dict[str, dict[int, str]] = {}
    print(f"{'document':<12} {'package':<14} {'pages':>5}  sha256", file=out)
    for doc in data["documents"]:
        path = Path(doc["path"])
        if not path.is_file():
            print(f"{doc['id']:<12} {doc['package']:<14} {'-':>5}  MISSING {path} (run with --install)", file=out)
            failures += 1
            continue
        ok_hash = sha256(path) == doc["sha256"]
        pages[doc["id"]] = read_pages(path)
        n = len(pages[doc["id"]])
        ok_pages = n == doc["pages"]
        status = "ok" if ok_hash and ok_pages else (
            ("HASH MISMATCH " if not ok_hash else "") + (f"PAGES {n} != {doc['pages']}" if not ok_pages else ""))
        failures += not (ok_hash and ok_pages)
        print(f"{doc['id']:<12} {doc['package']:<14} {n:>5}  {status}", file=out)
    print(file=out)
    page_tokens = {d: {n: tokens(t) for n, t in ps.items()} for d, ps in pages.items()}

    def pages_with(doc: str, answer: str) -> int:
        needle = tokens(answer)
        k = len(needle)
        return sum(any(toks[i:i + k] == needle for i in range(len(toks) - k + 1))
                   for toks in page_tokens.get(doc, {}).values()) if needle else 0

    print(f"{'question':<14} {'kind':<8} {'style':<10} {'gold':<28} {'alts':>5} {'elsewhere':>9}  result", file=out)
    seen: set[str] = set()
    for q in data["questions"]:
        problems = []
        if q["id"] in seen:
            problems.append("duplicate id")
        seen.add(q["id"])
        parts = q.get("answer_parts") or [q["answers"]] * len(q["gold"])
        if len(parts) != len(q["gold"]):
            problems.append("answer_parts and gold differ in length")
        if q["kind"] == "two-book" and len({g["doc"] for g in q["gold"]}) != 2:
            problems.append("two-book question without two books")
        if q["kind"] == "single" and len(q["gold"]) != 1:
            problems.append("single question without exactly one gold page")
        if sorted(q["docs"]) != sorted({g["doc"] for g in q["gold"]}):
            problems.append("docs do not match the gold pages")
        alts_on, alts_all, elsewhere = 0, 0, []
        for gold, alts in zip(q["gold"], parts):
            if gold["doc"] not in docs:
                problems.append(f"unknown document {gold['doc']}")
                continue
            text = pages.get(gold["doc"], {}).get(gold["page"])
            if text is None:
                problems.append(f"{gold['doc']} p{gold['page']} not readable")
                continue
            if not contains(text, alts[0]):
                problems.append(f"'{alts[0]}' ({normalize(alts[0])}) not on {gold['doc']} p{gold['page']}")
            alts_on += sum(contains(text, a) for a in alts)
            elsewhere.append(str(max(pages_with(gold["doc"], alts[0]) - 1, 0)))
            alts_all += len(alts)
        # the reference answer must grade as correct against itself
        reference = " ; ".join(p[0] for p in parts)
        if not grade(reference, q):
            problems.append("reference answer does not grade as correct")
        failures += bool(problems)
        gold_s = ", ".join(f"{g['doc']} p{g['page']}" for g in q["gold"])
        print(f"{q['id']:<14} {q['kind']:<8} {q['style']:<10} {gold_s:<28} {alts_on:>2}/{alts_all:<2} "
              f"{'+'.join(elsewhere):>9}  "
              + ("ok" if not problems else "FAIL: " + "; ".join(problems)), file=out)
    kinds = {}
    for q in data["questions"]:
        kinds[(q["kind"], q["style"])] = kinds.get((q["kind"], q["style"]), 0) + 1
    print(file=out)
    print(f"{len(data['documents'])} documents, {len(data['questions'])} questions: "
          + ", ".join(f"{k} {s} {n}" for (k, s), n in sorted(kinds.items())), file=out)
    print("alts = acceptable answers found on the gold page (the first one must be); elsewhere = other pages "
          "of the same book where the first answer also occurs (information only)", file=out)
    print(f"{'ALL OK' if not failures else f'{failures} FAILURE(S)'}", file=out)
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="verify hashes and gold pages")
    ap.add_argument("--install", action="store_true", help="apt-get install the packages whose PDFs are missing")
    args = ap.parse_args(argv)
    if not (args.check or args.install):
        ap.print_help()
        return 2
    import logging

    logging.basicConfig(level=logging.ERROR)  # pypdf's warnings about odd objects are not ours
    if args.install:
        try:
            installed = ensure_packages()
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        print("installed: " + (" ".join(installed) or "nothing (all PDFs present)"))
    if args.check:
        return 1 if check() else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
