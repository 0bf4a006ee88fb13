"""Issue 18: the compressors measured through the product path (ingest -> memories -> ``Tome.ask``).

Parts (each run appends finished cells to ``bench/results/eval_compress_<model>_<part>.json``, so an
interrupted run keeps what it finished and a rerun skips finished cells; memories are kept in
``--work`` and reused):

- ``passkey``: the 5-digit pass key (``bench/qa/passkey.py``) as PDFs at ``--lengths`` tokens and
  depths 0/25/50/75/100 %; one cell = (length, method) over all depths.
- ``planted``: ``bench/qa/planted.make_books(pages=--pages)``: 3 books, 36 single-book + 6 two-book
  questions, graded with ``grade()``.
- ``realdocs``: ``bench/qa/realdocs.json`` questions over the manuals named by ``--docs`` (a subset:
  compressing all 1,035 pages with KVzip on one CPU thread takes hours); two-book questions are
  kept when both books are in the subset.
- ``report``: merges the part files into ``bench/results/eval_compress_<model>.json``, prints the
  tables and draws ``docs/compression_<model>.png``.

A method is ``<compressor>@<ratio>`` (compressed mode, memories made on demand by ``Tome.memory``,
the default memory budget), ``full`` (uncompressed, the whole book in the prompt: ``context_budget``
raised to the model's window) or ``retrieval`` (uncompressed, the default config: the segments
closest to the question within 3,072 tokens); ``gold`` (``realdocs`` only: uncompressed, the question's gold
page(s) alone, each whole: what the reader answers with the answer's page in front of it). Compressed cells read the memories alone; ``<method>/xN``
adds the N passages retrieval ranks best as text (the product's ``memory_excerpts``), ``/pN`` the pages
of each book's N best passages, whole (``memory_excerpt_unit="page"``), ``/xNnomem`` and ``/pNnomem`` give
that text alone (the control: no memory slot fits), ``/xNbM`` that text beside at most M memory slots
(``memory_budget``, with ``memory_excerpt_budget`` off: the segments closest to the question first), and a
``skip`` suffix (``/x1skip``, ``/x1b512skip``) gives those slots to segments other than the text's own
(``memory_skip_excerpted``). ``--set TOME_X=value`` sets a product setting for every cell of a run.

Per cell: answers, correctness, the time to the first token (``stats.timing.ttft_s``, measured by the
product from the start of ``ask``), slots read (``prefix_len``) against the memory's slots (where the
CPU memory budget ``uio.model.flat_ttft_slots`` bit), context tokens, the time ``Tome.memory`` took to
make each memory (the compression cost; the plain forward's tokens/s is measured in the same process)
and the stored bytes per document token.

    export MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \\
           MALLOC_TOP_PAD_=1073741824 HF_HUB_OFFLINE=1
    .venv/bin/python bench/eval_compress.py passkey --model qwen --lengths 2048 \\
        --methods kvzip@8,kvzip@32,snapkv@8,keynorm@8,streaming@8,full,retrieval
    .venv/bin/python bench/eval_compress.py planted --model qwen --pages 12 --methods ...
    .venv/bin/python bench/eval_compress.py realdocs --model qwen --docs r-data,r-faq --methods ...
    .venv/bin/python bench/eval_compress.py report --model qwen
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Iterator

from bench.common import DOCS_DIR, MODELS_DIR, RESULTS_DIR, ROOT, result_text, table, write_json

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
SHORT = " Answer briefly."  # QA questions ask for a short answer (max_new_tokens 24)


# -- the service ---------------------------------------------------------------------------------------
def make_tome(model: str, work: Path, threads: int, adapter: Path | None = None, segment_len: int = 0):
    """The service under test; ``adapter``: the UIO adapter ``uio@<ratio>`` uses (default: the shipped one);
    ``segment_len``: books cut at this many tokens (0: the product's default; use its own ``--work``)."""
    from tome.config import Config
    from tome.service import Tome

    cfg = replace(Config.from_env(env=SETTINGS), data_dir=work, model=model, models_dir=MODELS_DIR, compress=False,
                  threads=threads, max_new_tokens=24, adapter=adapter)
    if segment_len:
        cfg = replace(cfg, segment_len=segment_len)
    t = Tome(cfg)
    from uio.runtime import set_threads

    set_threads(threads)
    return t


def ingest_all(tome, paths: list[Path]) -> dict[str, object]:
    """Path -> DocumentInfo (a file ingested before, in the same data dir, is found by its sha256)."""
    out = {}
    for p in paths:
        r = tome.ingest(p)
        if r.error and not r.duplicate:
            raise RuntimeError(f"{p}: {r.error}")
        doc = r.document
        if doc is None:
            import hashlib

            sha = hashlib.sha256(p.read_bytes()).hexdigest()
            doc = next(d for d in tome.documents() if d.sha256 == sha)
        out[str(p)] = doc
    return out


def make_memory(tome, doc, name: str, ratio: int, storage: str = "16bit") -> dict:
    """Make (or find) ``doc``'s memory; the seconds it took when made now, its bytes per document token.

    ``storage="int8"``: the memory is then served from an int8 file (``use_int8_file``), whose bytes count."""
    fp = tome.models.compressor(ratio, name).identity(tome.lm)  # a "/poolK" cell's compressor included
    made = all(m.fingerprint != fp for m in tome.memory_sets(doc.id))
    t = time.perf_counter()
    mem = tome.memory(doc, ratio=ratio, compressor=name)
    s = time.perf_counter() - t
    ms = next(m for m in tome.memory_sets(doc.id) if m.fingerprint == fp)
    size = ms.bytes
    if storage == "int8":
        mem, size = use_int8_file(tome, doc, name, ratio)
    return {"doc": doc.title, "doc_id": doc.id, "tokens": doc.tokens, "slots": int(mem.num_slots), "bytes": size,
            "bytes_per_token": round(size / max(doc.tokens, 1), 1), "storage": storage,
            "compress_s": round(s, 2) if made else None}


INT8_SERVED: set[str] = set()  # memory sets whose cached memory is the int8 file's (use_int8_file)


def use_int8_file(tome, doc, name: str, ratio: int):
    """``doc``'s memory stored as int8 and read back, served to ``Tome.ask`` in place of the 16-bit one.

    The stored (16-bit) memory set is written with ``Memory.save(storage="int8")`` beside it (the file
    ``memory_dtype="int8"`` makes: ``tome.memories`` quantises the same 16-bit tensors once), read with
    ``Memory.load`` as ``tome.memories.load`` reads any file, and put in the service's memory cache under the
    set's checksum, so the product path (budget, assembly, decoding) reads it. The 16-bit set stays the
    library's: ``drop_int8_files`` takes the int8 ones out of the cache after the cell. -> (memory, file bytes)
    """
    from uio.memory import Memory

    ms = next(m for m in tome.memory_sets(doc.id) if m.compressor == name and m.ratio == ratio)
    path = tome.config.data_dir / "int8_memories" / f"{ms.sha256}.safetensors"  # outside the library's files
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tome.memories.cache.pop(ms.sha256)
        Memory.load(tome.config.memories_path / ms.path, expect_fingerprint=ms.fingerprint).save(path, storage="int8")
    mem = Memory.load(path, expect_fingerprint=ms.fingerprint, device=str(tome.lm.device))
    tome.memories.cache.put(ms.sha256, mem)
    INT8_SERVED.add(ms.sha256)
    return mem, path.stat().st_size


def drop_int8_files(tome) -> None:
    """The memories ``use_int8_file`` served leave the cache: the next reader loads the 16-bit sets."""
    for sha in INT8_SERVED:
        tome.memories.cache.pop(sha)
    INT8_SERVED.clear()


def parse_method(method: str) -> tuple[str, int | None, str]:
    """"kvzip@8/inline-spaced" -> ("kvzip", 8, "inline-spaced"); "retrieval" -> ("retrieval", None, "")."""
    method, _, variant = method.partition("/")
    name, _, ratio = method.partition("@")
    return name, int(ratio) if ratio else None, variant


def ask(tome, docs: list, question: str, method: str, max_new: int, meta: dict | None = None) -> dict:
    base = tome.config
    kw: dict = {"max_new_tokens": max_new}
    name, ratio, variant = parse_method(method)
    if name == "gold":  # the ceiling: uncompressed mode over the question's gold page(s) alone (realdocs)
        if not meta or "gold" not in meta:
            raise ValueError("the gold cell needs questions with gold pages (the realdocs part)")
        from bench.qa.realdocs import gold_context

        by_key = dict(zip(meta["docs"], docs))
    if variant == "fullcache":  # the recent cache without the default policy (the gate): HF generate
        kw["cache_policy"] = "full"
    elif variant == "int8" or variant.startswith(COMPRESSOR_VARIANTS):  # int8: run_cell's make_memory; others: compressor_variant
        pass
    elif EXCERPT_CELL.fullmatch(variant):  # kvzip-fast@8/x2: the 2 best passages as text beside the memories,
        pass                                # /p1: each book's best page (below)
    elif variant:  # <layout>-<positions> of compressed mode, e.g. kvzip@8/before-consecutive (the old layout)
        layout, positions = variant.split("-")
        tome.config = replace(base, memory_layout=layout, memory_positions=positions)
    if ratio is None:  # full, retrieval, gold
        kw["mode"] = "uncompressed"
        if name == "full":
            tome.config = replace(base, context_budget=tome.lm.window)
    else:  # the memories alone measure the compressor; "/xN" adds the product's N best passages as text
        kw.update(mode="compressed", compressor=name, ratio=ratio)
        cell = EXCERPT_CELL.fullmatch(variant)
        tome.config = replace(tome.config, memory_excerpts=int(cell[2]) if cell else 0,
                              memory_excerpt_unit="page" if cell and cell[1] == "p" else "passage")
        if cell and cell[3]:  # "/x1nomem", the control: the passages alone (no segment fits 1 slot);
            budget = 1 if cell[3] == "nomem" else int(cell[3][1:])  # "/x1b512": at most 512 memory slots
            tome.config = replace(tome.config, memory_budget=budget, memory_excerpt_budget=0)
        if cell and cell[4]:
            tome.config = replace(tome.config, memory_skip_excerpted=True)
    if name == "gold":  # patched here, so no exception between this and the ``finally`` can leave it in place
        tome.answerer.choose = lambda *a, **k: gold_context(meta, by_key, tome.lm.tokenizer)
    try:
        last = None
        for last in tome.ask([d.id for d in docs], question, **kw):
            pass
    finally:
        tome.config = base
        if name == "gold":
            del tome.answerer.choose  # the class's method again
    st = last.stats
    return {"text": last.text, "ttft_s": st.get("timing", {}).get("ttft_s"), "gen_ttft_s": st.get("ttft_s"), "timing": st.get("timing"), "policy": st.get("cache_policy"),
            "prompt_tokens": st.get("prompt_tokens"), "prefix_len": st.get("memory_slots", st.get("prefix_len")),
            "context_tokens": last.context_tokens, "kv_bytes": st.get("kv_bytes"),
            "truncated": bool(last.truncated), "total_s": st.get("total_s"),
            "first_answer": (st.get("reread") or {}).get("first_answer"),  # set when the answer was re-read
            "pages": sorted({p for s in last.sources for p in range(s.page_start, s.page_end + 1)})
            if last.sources and hasattr(last.sources[0], "page_start") else None}


EXCERPT_CELL = re.compile(r"([xp])(\d+)(nomem|b\d+)?(skip)?")  # /xN: N passages as text, /pN: N pages a book;
# then nomem: no memory slot, bM: at most M memory slots (the product's memory_budget); skip: the memory slots
# go to other segments than the excerpts' (memory_skip_excerpted)
COMPRESSOR_VARIANTS = ("pool", "cap", "share")  # cell variants that change the compressor (compressor_variant)
SCORER: Path | None = None  # --scorer: the weights file kvzip-fast cells use instead of the shipped one
SETTINGS: dict[str, str] = {}  # --set TOME_X=value: product settings of every cell of the run (recorded in each)


@contextmanager
def compressor_variant(tome, name: str, ratio: int | None, variant: str) -> Iterator[None]:
    """"kvzip-fast@8/pool5": inside the block, Tome makes and reads ``name`` at ``ratio`` with its scores
    average-pooled over 5 tokens (``ScoringCompressor.pool``): other memories, another fingerprint;
    "kvzip@32/cap25": no 32-token window holds more than 25 % of a head's slots (``span_cap``);
    "kvzip-fast@32/share16": groups of 16 segments split one budget by their scores (``share``).
    With ``--scorer FILE``, kvzip-fast cells score with that file (its digest is in the fingerprint)."""
    kw: dict = {}
    if ratio is not None and variant.startswith("pool"):
        kw["pool"] = int(variant[4:])
    if ratio is not None and variant.startswith("cap"):
        kw["span_cap"] = int(variant[3:]) / 100
    if ratio is not None and variant.startswith("share"):  # "share16": groups of 16 segments split one budget; "share1": none
        kw["share"] = int(variant[5:])
    if ratio is not None and SCORER is not None and tome.models.compressor_name(name) == "kvzip-fast":
        kw["weights"] = str(SCORER)
    if not kw:
        yield
        return
    # The configured compressor with these fields changed: a variant keeps the product's other settings
    # (Config.memory_share included; "/share1" is the per-segment control).
    with tome.models.compressor_override(replace(tome.models.compressor(ratio, name), **kw)):
        yield


def plain_forward_tok_s(tome, doc) -> float:
    """Tokens/s of a plain forward over ``doc``'s stored segments (one at a time), as the compressors read them."""
    import torch

    lm = tome.lm
    tok = lm.tokenizer
    segs = [tok(r.text, add_special_tokens=False)["input_ids"][:tome.config.segment_len]
            for r in tome.store.segments(doc.id)]
    n = sum(len(s) for s in segs)
    with torch.inference_mode():
        lm.model.model(input_ids=torch.tensor([segs[0][:64]]), use_cache=True)  # warm-up
        t = time.perf_counter()
        for s in segs:
            lm.model.model(input_ids=torch.tensor([s]), use_cache=True)
        return n / (time.perf_counter() - t)


# -- results files -------------------------------------------------------------------------------------
TAG = ""  # --tag: a separate results file for a run beside another of the same part
RESUME = False  # --resume: a cell left partial by an interrupted run keeps its answers and asks the rest


def part_path(model: str, part: str, tag: str | None = None) -> Path:
    """A part's results file; ``tag``: another run's (default: this run's ``--tag``)."""
    suffix = TAG if tag is None else f"_{tag}" if tag else ""
    return RESULTS_DIR / f"eval_compress_{model}_{part}{suffix}.json"


def load_part(model: str, part: str) -> dict:
    p = part_path(model, part)
    return json.loads(p.read_text()) if p.is_file() else {"model": model, "part": part, "cells": {}, "speed": []}


def save_part(model: str, part: str, data: dict) -> None:
    p = part_path(model, part)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(result_text(data) + "\n")
    tmp.replace(p)


def dtype_name(tome) -> str:
    """The compute dtype: greedy answers differ between bf16 and fp32 hosts, so compare cells of one dtype."""
    return str(tome.lm.dtype).removeprefix("torch.")


def run_cell(tome, data: dict, key: str, method: str, items: list[tuple[list, str, dict]], grade, max_new: int,
             model: str, part: str) -> None:
    """One (set, method) cell: memories for every document involved, then every question."""
    if key in data["cells"]:
        print(f"skip {key} (done)", flush=True)
        return
    t0 = time.perf_counter()
    memories = []
    seen: set = set()
    rows = []
    before = data.get("partial", {}).get(key)
    if RESUME and before and before.get("method") == method:  # --resume: an interrupted cell goes on
        rows, memories = list(before["rows"]), list(before["memories"])
        seen = {m["doc_id"] for m in memories}
        done = {r["id"] for r in rows}
        items = [it for it in items if it[2].get("id") not in done]
        print(f"  {key}: resuming after {len(rows)} answered questions", flush=True)
    planned = len(rows) + len(items)
    name, ratio, variant = parse_method(method)
    storage = "int8" if variant == "int8" else "16bit"
    with compressor_variant(tome, name, ratio, variant):  # "/poolK": the pooled compressor
        try:
            for docs, question, meta in items:
                if ratio is not None:  # this question's memories first (made on demand): a partial cell has whole rows
                    for d in docs:
                        if d.id not in seen:
                            seen.add(d.id)
                            memories.append(make_memory(tome, d, name, ratio, storage))
                r = ask(tome, docs, question, method, max_new, meta)
                r["correct"] = bool(grade(r["text"], meta))
                r["id"] = meta.get("id")
                r.update({k: v for k, v in meta.items() if k in ("depth", "length", "key", "kind", "style")})
                r["doc_slots"] = sum(m["slots"] for m in memories if m["doc_id"] in {d.id for d in docs}) or None
                r["doc_tokens"] = sum(d.tokens for d in docs)
                rows.append(r)
                data.setdefault("partial", {})[key] = {"method": method, "n_planned": planned, "rows": rows,
                                                       "accuracy": sum(x["correct"] for x in rows) / len(rows),
                                                       "n": len(rows), "memories": memories}
                save_part(model, part, data)  # an interrupted cell keeps its answered questions (marked partial)
                print(f"  {key} {r['id']}: {'OK ' if r['correct'] else 'no '} ttft {r['ttft_s']}s "
                      f"prefix {r['prefix_len']} ctx {r['context_tokens']} | {r['text'][:70]!r}", flush=True)
        finally:
            drop_int8_files(tome)  # the next cell reads the library's 16-bit memories again
    acc = sum(r["correct"] for r in rows) / len(rows)
    data.get("partial", {}).pop(key, None)
    data["cells"][key] = {"method": method, "accuracy": acc, "n": len(rows), "memories": memories,
                          "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
                          "memory_budget": tome.memory_budget(),
                          "memory_excerpt_budget": tome.memory_budget(excerpts=True),
                          "finished": time.strftime("%H:%M:%S"), "dtype": dtype_name(tome), "settings": SETTINGS}
    save_part(model, part, data)
    print(f"== {key}: {acc:.2%} of {len(rows)} ({time.perf_counter() - t0:.0f}s)", flush=True)


# -- parts -----------------------------------------------------------------------------------------------
def passkey_key(path: Path, length: int, depth: float) -> dict:
    """{"seed", "key"} of the pass-key PDF at ``path``, kept beside it (``.json``) so that a later run with other
    ``--depths`` grades a reused PDF against the key it holds. Seeds: ``length`` + the depth's index among the
    default five (the files of every run before the sidecar), else ``length`` + 1000 + the depth in %."""
    from bench.qa import passkey

    side = path.with_suffix(".json")
    if side.is_file():
        return json.loads(side.read_text())
    pct = int(depth * 100)
    default = [int(d * 100) for d in passkey.DEPTHS]
    seed = length + (default.index(pct) if pct in default else 1000 + pct)
    info = {"seed": seed, "key": passkey.make_key(seed)}
    side.write_text(json.dumps(info) + "\n")
    return info


def part_passkey(args) -> None:
    from bench.qa import passkey

    work = args.work / args.model / "passkey"
    tome = make_tome(args.model, work, args.threads, args.adapter, args.segment_len)
    data = load_part(args.model, "passkey")
    pdfs = work / "pdfs"
    pdfs.mkdir(parents=True, exist_ok=True)
    depths = [float(d) / 100 for d in args.depths.split(",")]
    for length in [int(x) for x in args.lengths.split(",")]:
        items = []
        for depth in depths:
            path = pdfs / f"pk_{length}_{int(depth * 100)}.pdf"
            info = passkey_key(path, length, depth)
            if not path.is_file():  # written once: pypdf's file ID differs per write, and a rerun must find the doc
                passkey.passkey_pdf(path.with_suffix(".tmp"), tome.lm.tokenizer, length, depth, seed=info["seed"])
                path.with_suffix(".tmp").replace(path)
            doc = ingest_all(tome, [path])[str(path)]
            items.append(([doc], passkey.QUESTION,
                          {"id": f"pk{length}-{int(depth * 100)}", "answers": [info["key"]], "depth": depth,
                           "length": length, "key": info["key"]}))
        if args.speed and not any(s.get("length") == length for s in data["speed"]):
            data["speed"].append({"length": length, "doc_tokens": items[-1][0][0].tokens,
                                  "plain_forward_tok_s": round(plain_forward_tok_s(tome, items[-1][0][0]), 1)})
            save_part(args.model, "passkey", data)
            print("plain forward", data["speed"][-1], flush=True)
        for method in args.methods.split(","):
            run_cell(tome, data, f"passkey|{length}|{method}", method, items, passkey.grade, args.max_new,
                     args.model, "passkey")


def planted_library(tome, work: Path, pages: int) -> tuple[dict, dict]:
    """The planted-fact set (made once in ``work``/books) and its books ingested: (qset, book id -> DocumentInfo)."""
    from bench.qa import planted

    qset = planted.make_books(work / "books", seed=0, pages=pages)
    paths = {d["id"]: Path(d["path"]) if "path" in d else work / "books" / d["filename"] for d in qset["documents"]}
    docs = ingest_all(tome, list(paths.values()))
    return qset, {k: docs[str(p)] for k, p in paths.items()}


def realdocs_library(tome, batches: str, chosen: list[str]) -> tuple[dict, dict]:
    """The real-manual questions of ``batches`` and the ``chosen`` manuals ingested: (qset, id -> DocumentInfo)."""
    from bench.qa import realdocs

    qset = realdocs.load(batches=realdocs.parse_batches(batches))
    meta = realdocs.documents(qset)
    docs = ingest_all(tome, [Path(meta[d]["path"]) for d in chosen])
    return qset, {d: docs[meta[d]["path"]] for d in chosen}


def realdocs_items(qset: dict, by_id: dict) -> list[tuple[list, str, dict]]:
    """(documents, question as asked, the question's record) for each question whose manuals are all in ``by_id``."""
    return [([by_id[x] for x in q["docs"]], q["question"] + SHORT, q) for q in qset["questions"]
            if all(x in by_id for x in q["docs"])]


def part_planted(args) -> None:
    from bench.qa import planted

    work = args.work / args.model / f"planted{args.pages}"
    tome = make_tome(args.model, work, args.threads, args.adapter, args.segment_len)
    data = load_part(args.model, "planted")
    qset, by_id = planted_library(tome, work, args.pages)
    items = [([by_id[x] for x in q["docs"]], q["question"] + SHORT, q) for q in qset["questions"]]
    data["set"] = {"pages": args.pages, "questions": len(items),
                   "tokens": {d.title: d.tokens for d in by_id.values()}}
    for method in args.methods.split(","):
        run_cell(tome, data, f"planted|{args.pages}p|{method}", method, items, planted.grade, args.max_new,
                 args.model, "planted")


def part_realdocs(args) -> None:
    from bench.qa import realdocs

    work = args.work / args.model / "realdocs"
    tome = make_tome(args.model, work, args.threads, args.adapter, args.segment_len)
    data = load_part(args.model, "realdocs")
    chosen = args.docs.split(",")
    qset, by_id = realdocs_library(tome, args.batches, chosen)
    items = realdocs_items(qset, by_id)
    data["set"] = {"docs": chosen, "questions": len(items),
                   "tokens": {d: by_id[d].tokens for d in chosen}, "pages": {d: by_id[d].pages for d in chosen}}
    print(data["set"], flush=True)
    tag = "+".join(chosen) + ("" if args.batches == "1" else f" batches {args.batches}")
    for method in args.methods.split(","):
        run_cell(tome, data, f"realdocs|{tag}|{method}", method, items, realdocs.grade, args.max_new,
                 args.model, "realdocs")


# -- report ----------------------------------------------------------------------------------------------
def next_segment_nll(tome, doc, method: str, prev: int, target: int,
                     own: bool = False) -> list[tuple[float, int, int]]:
    """(summed NLL, tokens, tokens predicted right) of the first ``target`` tokens of each segment after the
    first, read after the ``prev`` segments before it: raw tokens ("full"), nothing ("none") or their memories
    ("<compressor>@<ratio>", at the config's ``memory_positions``, or "<compressor>@<ratio>/<positions>", or
    ".../int8": stored in int8), before the text. ``own``: auto-encoding instead: every segment read after
    its own memory (the last of the ``prev``), so the tokens scored are the ones the memory compressed."""
    import torch

    from uio.decoder import build_context

    lm = tome.lm
    name, ratio, variant = parse_method(method)
    int8 = variant == "int8"  # the memories stored as a KIVI-style int8 file and read back (use_int8_file)
    made_by = variant if variant.startswith(COMPRESSOR_VARIANTS) else ""  # "/pool3", "/share16": another compressor
    positions = variant if variant and not (int8 or made_by) else tome.config.memory_positions
    segs = tome.memories.stored_segments(doc)
    mem = None
    if ratio is not None:
        with compressor_variant(tome, name, ratio, made_by):
            mem = tome.memory(doc, ratio=ratio, compressor=name)
        if int8:
            mem = use_int8_file(tome, doc, name, ratio)[0]
            drop_int8_files(tome)
    out = []
    for i in range(0 if own else 1, len(segs)):
        ids = list(segs[i].token_ids[:target])
        if len(ids) < 2:
            continue
        before = segs[max(0, i + own - prev):i + own]
        if name == "full":
            parts = [[t for s in before for t in s.token_ids]]
        elif name == "none":
            parts = []
        else:
            parts = [mem.select([s.index for s in before])]
        cache, m = build_context(lm, parts, positions=positions)
        pos = torch.arange(m, m + len(ids))[None]
        with torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([ids]), past_key_values=cache, position_ids=pos,
                              cache_position=pos[0]).logits[0, :-1].float()
        gold = torch.tensor(ids[1:])
        nll = torch.nn.functional.cross_entropy(logits, gold, reduction="sum")
        out.append((float(nll), len(ids) - 1, int((logits.argmax(-1) == gold).sum())))
    return out


def part_ppl(args) -> None:
    """Next-segment perplexity given the memories, on the planted books (generated; 4 segments each)."""
    import math

    from bench.qa import planted

    work = args.work / args.model / f"planted{args.pages}"
    tome = make_tome(args.model, work, args.threads, args.adapter, args.segment_len)
    data = load_part(args.model, "ppl")
    qset = planted.make_books(work / "books", seed=0, pages=args.pages)
    paths = [Path(d["path"]) if "path" in d else work / "books" / d["filename"] for d in qset["documents"]]
    docs = list(ingest_all(tome, paths).values())
    kinds = ["ppl"] + (["ae"] if args.autoencode else [])
    for kind, method in [(k, m) for m in ["none", "full"] + args.methods.split(",") for k in kinds]:
        key = f"{kind}|{args.pages}p|prev{args.ppl_prev}|{method}"
        if key in data["cells"]:
            continue
        t0 = time.perf_counter()
        rows = [r for d in docs
                for r in next_segment_nll(tome, d, method, args.ppl_prev, args.ppl_tokens, own=kind == "ae")]
        nll, n, right = (sum(r[k] for r in rows) for k in range(3))
        data["cells"][key] = {"method": method, "kind": kind, "ppl": round(math.exp(nll / n), 3), "tokens": n,
                              "accuracy": round(right / n, 4), "segments": len(rows),
                              "seconds": round(time.perf_counter() - t0, 1), "dtype": dtype_name(tome)}
        save_part(args.model, "ppl", data)
        print(f"== {key}: ppl {data['cells'][key]['ppl']}, accuracy {right / n:.3f} over {n} tokens", flush=True)


def ppl_rows(model: str) -> list[dict]:
    """The perplexity cells as rows: ppl, and the share of the log-perplexity gap between no context and
    the raw context that a method closes (1 = as good as the raw text)."""
    import math

    cells = load_part(model, "ppl")["cells"]
    rows = []
    for kind in ("ppl", "ae"):  # next-segment perplexity; auto-encoding (a segment after its own memory)
        mine = [c for c in cells.values() if c.get("kind", "ppl") == kind]
        ref = {c["method"]: c["ppl"] for c in mine if c["method"] in ("none", "full")}
        gap = math.log(ref["none"]) - math.log(ref["full"]) if len(ref) == 2 else None
        for c in mine:
            row = {"context": c["method"], "ppl": c["ppl"], "tokens": c["tokens"]}
            if "accuracy" in c:  # cells written before token accuracy was measured have none
                row = {"scored": "own segment" if kind == "ae" else "next segment", **row, "accuracy": c["accuracy"]}
            if gap:
                row["gap_closed"] = round((math.log(ref["none"]) - math.log(c["ppl"])) / gap, 2)
            rows.append(row)
    return rows


def _med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 2) if xs else None


def md(rows: list[dict]) -> str:
    """``rows`` as a Markdown table (for docs/COMPRESSION.md)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def report(args) -> None:
    model = args.model
    parts = {p: load_part(model, p) for p in ("passkey", "planted", "realdocs")}
    for p in parts:  # runs written under a --tag join their part
        for extra in sorted(RESULTS_DIR.glob(f"eval_compress_{model}_{p}_*.json")):
            more = json.loads(extra.read_text())
            parts[p]["cells"].update(more["cells"])
            parts[p].setdefault("partial", {}).update(more.get("partial", {}))
            parts[p].setdefault("set", more.get("set"))
            parts[p]["speed"] += more.get("speed", [])
    out = {"model": model, "threads": args.threads, "parts": parts}
    for p in parts.values():  # a cell cut short (memories made and questions answered so far) is shown as such
        for k, c in p.get("partial", {}).items():
            if k not in p["cells"]:
                p["cells"][k] = dict(c, partial=True)
    pk = parts["passkey"]["cells"]
    for c in pk.values():  # cells written before memories carried doc_id: one document per row, same order
        if c["memories"] and "doc_id" not in c["memories"][0] and len(c["memories"]) == len(c["rows"]):
            for r, m in zip(c["rows"], c["memories"]):
                r["doc_slots"] = m["slots"]
    # passkey: method x length, per depth
    lengths = sorted({int(k.split("|")[1]) for k in pk})
    methods = []
    for k in pk:
        m = k.split("|")[2]
        if m not in methods:
            methods.append(m)
    rows = []
    for m in methods:
        row = {"method": m}
        for L in lengths:
            c = pk.get(f"passkey|{L}|{m}")
            if c:
                hits = "".join("1" if r["correct"] else "0" for r in sorted(c["rows"], key=lambda r: r["depth"]))
                ds = sorted(int(r["depth"] * 100) for r in c["rows"])
                at = "" if ds == [0, 25, 50, 75, 100] else f" at {'/'.join(map(str, ds))} %"
                row[f"{L // 1024}K"] = f"{c['accuracy']:.0%} ({hits}{at}{', cut short' if c.get('partial') else ''})"
            else:
                row[f"{L // 1024}K"] = "not run"
        rows.append(row)
    print("\nPass key, share found (per depth 0/25/50/75/100 %: 1 found, 0 missed)")
    print(table(rows))
    out["passkey_table"] = rows
    # TTFT and slots per passkey cell
    rows = []
    for k, c in pk.items():
        _, L, m = k.split("|")
        rs = c["rows"]
        rows.append({"length": L, "method": m, "ttft_med_s": _med([r["ttft_s"] for r in rs]),
                     "prefix_slots": _med([r["prefix_len"] for r in rs]),
                     "doc_slots": _med([r["doc_slots"] for r in rs]),
                     "context_tokens": _med([r["context_tokens"] for r in rs]),
                     "cap_bit": any(r["doc_slots"] and r["prefix_len"] is not None and r["prefix_len"] < r["doc_slots"]
                                    for r in rs) if "@" in m else ""})
    print("\nTime to first token (median over depths), slots read vs the memory's slots")
    print(table(rows))
    out["ttft_table"] = rows
    # QA
    rows = []
    for part in ("planted", "realdocs"):
        cells = {k: dict(c, method=f"{c['method']} (partial: {c['n']} of {c['n_planned']})") if c.get("partial")
                 else c for k, c in parts[part]["cells"].items()}
        for k, c in cells.items():
            rs = c["rows"]
            single = [r for r in rs if r.get("kind") != "two-book"]
            two = [r for r in rs if r.get("kind") == "two-book"]
            rows.append({"set": k.split("|")[0] + " " + k.split("|")[1], "method": c["method"],
                         "accuracy": f"{c['accuracy']:.0%} ({sum(r['correct'] for r in rs)}/{len(rs)})",
                         "single": f"{sum(r['correct'] for r in single)}/{len(single)}",
                         "two-book": f"{sum(r['correct'] for r in two)}/{len(two)}",
                         "ttft_med_s": _med([r["ttft_s"] for r in rs]),
                         "context_med": _med([r["context_tokens"] for r in rs])})
    print("\nQuestion answering (grade(): normalised containment)")
    print(table(rows))
    out["qa_table"] = rows
    # compression speed and bytes
    plain = [s["plain_forward_tok_s"] for p in parts.values() for s in p.get("speed", [])]
    per: dict[str, dict] = {}
    for p in parts.values():
        for k, c in p["cells"].items():
            if "@" not in c["method"]:
                continue
            d = per.setdefault(c["method"], {"tokens": 0, "s": 0.0, "bpt": []})
            for mm in c["memories"]:
                if mm["compress_s"]:
                    d["tokens"] += mm["tokens"]
                    d["s"] += mm["compress_s"]
                d["bpt"].append(mm["bytes"] / max(mm["tokens"], 1))
    pf = max(plain) if plain else None
    rows = [{"method": m, "tokens_made": d["tokens"], "tok_s": round(d["tokens"] / d["s"], 1) if d["s"] else None,
             "vs_plain_forward": f"{d['tokens'] / d['s'] / pf:.2f}x" if d["s"] and pf else None,
             "bytes_per_doc_token": round(statistics.mean(d["bpt"]), 1)} for m, d in per.items()]
    print(f"\nCompression speed (Tome.memory, 1 thread) vs a plain forward {pf} tok/s; stored bytes per doc token")
    print(table(rows))
    out["speed_table"] = rows
    out["plain_forward_tok_s"] = plain
    out["ppl_table"] = ppl_rows(model)
    print("\nNext-segment perplexity given the context (gap_closed: 1 = the raw text's, 0 = none)")
    print(table(out["ppl_table"]))
    write_json(RESULTS_DIR / f"eval_compress_{model}.json", out)
    if args.markdown:
        args.markdown.write_text("\n\n".join(md(out[k]) for k in ("passkey_table", "ttft_table", "qa_table",
                                                                     "speed_table", "ppl_table")) + "\n")
        print(f"wrote {args.markdown}")
    plot(model, pk, lengths, methods)


def plot(model: str, pk: dict, lengths: list[int], methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.get_cmap("tab20").colors
    for i, m in enumerate(methods):
        xs, ys, ts = [], [], []
        for L in lengths:
            c = pk.get(f"passkey|{L}|{m}")
            if c:
                xs.append(L / 1024)
                ys.append(100 * c["accuracy"])
                ts.append(_med([r["ttft_s"] for r in c["rows"]]))
        style = "--" if m.endswith("@32") else "-"
        a.plot(xs, ys, style, marker="o", label=m, color=colors[i % 20])
        b.plot(xs, ts, style, marker="o", label=m, color=colors[i % 20])
    a.set(xscale="log", xlabel="document length (K tokens)", ylabel="pass key found (%)", ylim=(-5, 105),
          title=f"{model}: pass key over depths 0-100 %")
    a.set_xticks([L / 1024 for L in lengths], [f"{L // 1024}K" for L in lengths])
    b.set(xscale="log", yscale="log", xlabel="document length (K tokens)", ylabel="time to first token (s)",
          title="time to first token (median), 1 CPU thread")
    b.set_xticks([L / 1024 for L in lengths], [f"{L // 1024}K" for L in lengths])
    for ax in (a, b):
        ax.xaxis.set_minor_formatter(NullFormatter())
    a.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = DOCS_DIR / f"compression_{model}.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path.relative_to(ROOT)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["passkey", "planted", "realdocs", "ppl", "report"])
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--methods", default="kvzip@8,kvzip@32,snapkv@8,keynorm@8,streaming@8,full,retrieval")
    ap.add_argument("--lengths", default="2048,8192,16384")
    ap.add_argument("--depths", default="0,25,50,75,100")
    ap.add_argument("--pages", type=int, default=12, help="planted: pages per book")
    ap.add_argument("--docs", default="r-data,r-faq", help="realdocs: the manuals (ids in realdocs.json)")
    ap.add_argument("--batches", default="1", help="realdocs: question batches (1: the first 66, whose figures "
                    "the docs give unless they say otherwise; 1,2 or all: with the 40 added later)")
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--ppl-prev", type=int, default=3, help="ppl: segments of context before each scored one")
    ap.add_argument("--ppl-tokens", type=int, default=256, help="ppl: tokens scored at the start of each segment")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TOME_THREADS", "1")))
    ap.add_argument("--speed", action="store_true", help="passkey: time a plain forward over the longest document")
    ap.add_argument("--markdown", type=Path, help="report: also write the tables as Markdown here")
    ap.add_argument("--work", type=Path, default=Path("/tmp/eval_compress"))
    ap.add_argument("--autoencode", action="store_true",
                    help="ppl: also auto-encoding (each segment read after its own memory: ppl, token accuracy)")
    ap.add_argument("--adapter", type=Path, default=None, help="UIO adapter file for uio@<ratio> (default: shipped)")
    ap.add_argument("--scorer", type=Path, default=None,
                    help="learned-scorer weights for kvzip-fast@<ratio> cells (default: the shipped file)")
    ap.add_argument("--segment-len", type=int, default=0, help="tokens per segment (0: the product's; own --work)")
    ap.add_argument("--set", action="append", default=[], metavar="TOME_X=VALUE",
                    help="a product setting (README's variables) for every cell of this run, e.g. "
                         "TOME_MEMORY_EXCERPT_PLACE=user; repeatable; recorded in each cell")
    ap.add_argument("--tag", default="", help="results file suffix (bench/results/eval_compress_<model>_<part>_<tag>.json)")
    ap.add_argument("--resume", action="store_true",
                    help="a cell an interrupted run left partial (same tag, set and method) keeps its answered "
                         "questions and asks only the others (the settings must be the same: not checked)")
    args = ap.parse_args(argv)
    global TAG, SCORER, RESUME
    RESUME = args.resume
    SCORER = args.scorer
    from tome.config import Config

    known = {f.metadata.get("env") for f in fields(Config)} - {None}
    for pair in args.set:
        var, eq, value = pair.partition("=")
        if not eq or var not in known:
            ap.error(f"--set wants TOME_VARIABLE=value with a variable of the README's table, not {pair!r}")
        SETTINGS[var] = value
    TAG = f"_{args.tag}" if args.tag else ""
    {"passkey": part_passkey, "planted": part_planted, "realdocs": part_realdocs, "ppl": part_ppl,
     "report": report}[args.part](args)


if __name__ == "__main__":
    main()
