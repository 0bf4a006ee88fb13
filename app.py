#!/usr/bin/env python
"""Tome's entry point: ``serve`` (default), ``ingest``, ``status``, ``work``, ``cancel``, ``ask``, ``list``, ``gc``.

    python app.py serve --port 7860          # the UI, and the compression worker in a thread
    python app.py ingest book.pdf notes.md   # both stages, a progress bar per file and stage
    python app.py ingest --no-wait book.pdf  # askable in seconds; memories left to the queue
    python app.py status                     # the queue: book, stage, n/N segments, ETA
    python app.py ask --doc "My Book" "Who is the keeper of the light?"
    python app.py list
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from uio.runtime import tune_allocator

log = logging.getLogger("tome")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tome", description="Ask questions about whole books.")
    p.add_argument("--model", help="qwen (default), smollm2, a hub id or a path [TOME_MODEL]")
    p.add_argument("--data-dir", type=Path, help="where the library lives [TOME_DATA_DIR, ./data]")
    from uio.cache import policy_choices  # the one list of policy names (uio.cache.POLICIES + "auto")
    from uio.compress import compressor_choices  # the one list of compressor names (+ "auto")

    p.add_argument("--cache-policy", choices=policy_choices(),
                   help="recent-cache policy: auto (Attention-Gate where trained, else full) [TOME_CACHE_POLICY]")
    p.add_argument("--cache-eviction", type=float, help="share of the recent cache to evict, 0-0.9 [0.6]")
    p.add_argument("--compressor", choices=compressor_choices(),
                   help="how segments become memories: auto (the measured default for the model) [TOME_COMPRESSOR]")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="start the web UI (default)")
    s.add_argument("--host", help="bind address [127.0.0.1]")
    s.add_argument("--port", type=int, help="port [7860]")
    s.add_argument("--share", action="store_true", help="ask Gradio for a public link (off by default)")
    s.add_argument("--auth", help="user:password required to open the UI [TOME_AUTH]")
    i = sub.add_parser("ingest", help="add files to the library")
    i.add_argument("files", nargs="*", type=Path)
    i.add_argument("--password", help="password of encrypted PDFs")
    i.add_argument("--no-wait", dest="wait", action="store_false",
                   help="return once the books are askable (stage 1); their memories stay queued for "
                        "`app.py serve` or `app.py work`")
    i.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="compress on Ray actors: alone, a local Ray; or auto / ray://host:10001 [TOME_RAY_ADDRESS]")
    i.add_argument("--ray-actors", type=int, metavar="N", help="Ray actors, one per GPU if any [TOME_RAY_ACTORS, 2]")
    i.add_argument("--int8", action="store_true", default=None,
                   help="CPU ingestion through an int8 copy of the model [TOME_INT8_INGEST]")
    a = sub.add_parser("ask", help="ask a question about one or more books")
    a.add_argument("--doc", action="append", required=True, help="book id or title (repeat for several)")
    a.add_argument("--max-new-tokens", type=int)
    a.add_argument("--mode", choices=["uncompressed", "compressed"], default="uncompressed",
                   help="raw text in the prompt, or the books' stored memories")
    a.add_argument("question")
    sub.add_parser("list", help="list the library")
    sub.add_parser("status", help="the compression queue: book, stage, segments done, ETA")
    w = sub.add_parser("work", help="make the queued memories here (a worker; several may share PostgreSQL)")
    w.add_argument("--forever", action="store_true", help="keep waiting for new jobs instead of stopping when "
                                                          "the queue is empty")
    c = sub.add_parser("cancel", help="stop making a book's memories (it stays askable uncompressed)")
    c.add_argument("doc", help="book id or title")
    g = sub.add_parser("gc", help="remove memories that no compressor in use makes (another method, model or "
                                  "adapter)")
    g.add_argument("--dry-run", action="store_true", help="only list them")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = _ray_address_or_file(parser.parse_args(argv))
    if args.command == "ingest" and not args.files:
        parser.error("ingest: give at least one FILE")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tome import Config, Tome

    config = Config.from_env(model=args.model, data_dir=args.data_dir,
                             host=getattr(args, "host", None), port=getattr(args, "port", None),
                             auth=getattr(args, "auth", None), cache_policy=args.cache_policy,
                             compressor=args.compressor,
                             cache_eviction=args.cache_eviction, ray_address=getattr(args, "ray", None),
                             ray_actors=getattr(args, "ray_actors", None), int8_ingest=getattr(args, "int8", None))
    if config.tune_malloc:
        tune_allocator()
    tome = Tome(config)
    command = args.command or "serve"
    if command == "list":
        return _list(tome)
    if command == "gc":
        return _gc(tome, args.dry_run)
    if command == "status":
        return _status(tome)
    if command == "cancel":
        return _cancel(tome, args.doc)
    _recover(tome)
    if command == "ingest":
        return _ingest(tome, args.files, args.password, args.wait)
    if command == "work":
        return _work(tome, args.forever)
    if command == "ask":
        return _ask(tome, args.doc, args.question, args.max_new_tokens, args.mode)
    return _serve(tome, getattr(args, "share", False))


def _ray_address_or_file(args: argparse.Namespace) -> argparse.Namespace:
    """``ingest --ray book.pdf``: the optional ADDRESS swallowed the first file; give it back."""
    ray = getattr(args, "ray", None)
    if args.command == "ingest" and ray and "://" not in ray and ray not in ("local", "auto") and Path(ray).exists():
        args.files.insert(0, Path(ray))
        args.ray = "local"
    return args


def _recover(tome) -> None:
    """Finish ingestions a crash interrupted and delete files no row points at."""
    if not tome.needs_recovery():
        return
    report = tome.recover()
    for title in report.resumed:
        print(f"finished the interrupted ingestion of {title!r}")
    for title in report.requeued:
        print(f"queued the interrupted compression of {title!r} again; it resumes from its last saved chunk")
    for title in report.removed:
        print(f"removed {title!r}: its ingestion was interrupted and the original file is gone",
              file=sys.stderr)
    if report.orphans:
        print(f"deleted {len(report.orphans)} memory file(s) that no document pointed at")


def _list(tome) -> int:
    docs = tome.documents()
    if not docs:
        print("The library is empty. Add books with: python app.py ingest FILE...")
    progress = {p.job.document_id: p for p in tome.compression()
                if p.job.compressor == tome.models.compressor_name() and p.job.ratio == tome.config.ratio}
    for d in docs:
        print(f"{d.id:>4}  {d.title[:50]:<50}  {d.pages:>5} pages  {d.tokens:>8,} tokens  "
              f"{tome.book_status(d, progress)}")
    return 0


def _status(tome) -> int:
    """The queue: one line per book still in stage 1 or with memories not yet made (and failed ones)."""
    from tome.queue import fmt_eta

    rows = [(d.title, "1/2 reading", "", "") for d in tome.documents() if not d.ready]
    for p in tome.compression():
        j = p.job
        if j.status == "done":
            continue
        state = {"running": "compressing", "queued": "queued", "cancelled": "cancelling"}.get(j.status, j.status)
        eta = fmt_eta(p.eta_s) if j.active else (j.error or "")[:60]
        rows.append((j.title, f"2/2 {state} ({j.compressor} {j.ratio}x)", f"{j.segments_done}/{j.segments_total}",
                     eta))
    if not rows:
        print("Nothing queued: every book is askable and its memories are made.")
        return 0
    print(f"{'book':<40}  {'stage':<34}  {'segments':>9}  ETA")
    for title, stage, n, eta in rows:
        print(f"{title[:40]:<40}  {stage:<34}  {n:>9}  {eta}")
    return 0


def _cancel(tome, ref: str) -> int:
    from tome import NotFound

    try:
        doc = tome.document(ref)
    except NotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not tome.cancel_compression(doc.id):
        print(f"{doc.title!r} has no compression to cancel")
        return 1
    print(f"cancelled the compression of {doc.title!r}; it stays askable uncompressed")
    return 0


def _work(tome, forever: bool) -> int:
    """The worker, inline: queued jobs one at a time (with --forever, then waits for more)."""
    import time

    while True:
        for job in tome.compress_queued(_Bars().stage2_progress):
            print(f"{job.title}: memories {job.status}" + (f" ({job.error})" if job.error else ""))
        if not forever:
            return 0
        time.sleep(tome.config.compress_poll_s)


def _gc(tome, dry_run: bool) -> int:
    stale = tome.collect_memories(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for m in stale:
        print(f"{verb} {m.path} ({m.compressor} {m.ratio}x, {m.bytes / 2**20:.1f} MB) of document #{m.document_id}")
    print(f"{verb} {len(stale)} memory set(s), {sum(m.bytes for m in stale) / 2**20:.1f} MB")
    return 0


class _Bars:
    """tqdm bars, one per file and stage, with the stage's own percentage."""

    def __init__(self):
        self.bar = None

    def open(self, label: str):
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=100, desc=label, unit="%", leave=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
        return self

    def __call__(self, frac: float, msg: str) -> None:
        self.bar.set_postfix_str(msg.split(": ", 1)[-1])
        self.bar.update(min(100, round(frac * 100)) - self.bar.n)

    def stage2_progress(self, frac: float, msg: str) -> None:
        """For jobs run one after another: a new bar whenever the book changes."""
        title = msg.split(": ", 1)[0]
        if self.bar is None or self.bar.desc != f"{title} (memories)":
            self.open(f"{title} (memories)")
        self(frac, msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _ingest(tome, files: list[Path], password: str | None, wait: bool = True) -> int:
    """Stage 1 of every file first (each is askable as soon as its bar ends), then, unless --no-wait, the
    memories of each, in queue order, with a bar per file. Ray (--ray) compresses stage 2 the same way."""
    failed, done = 0, []
    bars = _Bars()
    for f in files:
        bars.open(f"{f.name} (stage 1/2: text)")
        r = tome.ingest(f, password=password, progress=bars, wait=False)
        bars.close()
        if r.error:
            failed += 1
            print(f"error: {r.error}", file=sys.stderr)
        elif r.duplicate:
            print(f"{f.name}: already in the library as #{r.document.id}")
            done.append((f, r))
        else:
            print(f"{f.name}: #{r.document.id} {r.document.title!r}, {r.document.pages} pages, "
                  f"{r.document.tokens:,} tokens, askable after {r.seconds:.1f} s")
            done.append((f, r))
    queued = [(f, r) for f, r in done if r.job is not None and r.job.active]
    if not wait:
        if queued:
            print(f"{len(queued)} book(s) queued for compression: `python app.py status` shows the queue; "
                  "`app.py serve` or `app.py work` makes the memories")
        return 1 if failed else 0
    for f, r in queued:
        bars.open(f"{f.name} (stage 2/2: memories)")
        job = tome.wait_compressed(r.document.id, bars)
        bars.close()
        if job is not None and job.status == "failed":
            failed += 1
            print(f"error: {f.name}: making its memories failed ({job.error}); it is askable uncompressed",
                  file=sys.stderr)
        elif job is not None:
            print(f"{f.name}: memories made ({job.segments_total} segments)")
    return 1 if failed else 0


def _ask(tome, docs: list[str], question: str, max_new_tokens: int | None, mode: str) -> int:
    from tome import NotFound

    try:
        ids = [tome.document(d).id for d in docs]
    except NotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if mode == "compressed":
        pending = tome.memories_pending(ids)
        if pending:  # the memories are still being made: answer from the text rather than wait
            print("; ".join(pending) + "; answering uncompressed", file=sys.stderr)
            mode = "uncompressed"
    u = None
    for u in tome.ask(ids, question, max_new_tokens=max_new_tokens, mode=mode):
        pass  # the CLI prints the final text; streaming to a terminal would interleave with logs
    print(u.text)
    if u.truncated:
        print(f"(too long for the window; read the passages closest to the question: {', '.join(u.truncated)})", file=sys.stderr)
    print("sources: " + "; ".join(s.label() for s in u.sources), file=sys.stderr)
    s = u.stats
    if s.get("reread"):
        print(f"(the first answer only restated the question; re-read {'; '.join(s['reread']['pages'])} alone)",
              file=sys.stderr)
    if s.get("restates_question"):
        print("(no clear answer: it only restates the question; check the cited pages)", file=sys.stderr)
    print(f"figures: first token {s['ttft_s']} s, {s['decode_tok_s']} tok/s, {s['prompt_tokens']} prompt tokens",
          file=sys.stderr)
    return 0


def _serve(tome, share: bool) -> int:
    from ui.app import build_app

    auth = None
    if tome.config.auth:
        user, sep, password = tome.config.auth.partition(":")
        if not sep or not user or not password:
            print("error: --auth / TOME_AUTH must be user:password", file=sys.stderr)
            return 2
        auth = (user, password)
    _ = tome.lm  # load (and on first run prepare) the model before the page opens
    tome.start_worker()  # stage 2 in a thread of this process: uploads return once the book is askable
    app = build_app(tome)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=tome.config.host, server_port=tome.config.port, share=share, auth=auth,
               max_file_size=f"{tome.config.max_file_mb}mb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
