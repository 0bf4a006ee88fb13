"""Does the passage compressed mode reads hold the answer: as ranked, or re-cut by ``retrieval.aim``?

For each real-manual question (``bench/qa/realdocs.json``; ``--part planted``: the planted-fact books), the
best passage of each chosen book (as compressed mode takes them: ``retrieval.narrow.best_per_book``), joined,
graded like an answer (an accepted answer word for word; a two-book question needs both). No model runs;
the library is the one ``bench/eval_compress.py realdocs`` (or ``planted``) built in ``--work``. Prints the
counts and the questions that moved, and writes ``bench/results/aim_probe.json`` (``--out``).

    .venv/bin/python bench/aim_probe.py --work /tmp/ev_pg --docs r-data,r-faq,r-admin,r-intro,bashref --batches 1,2
    .venv/bin/python bench/aim_probe.py --work /tmp/ev_pg --part planted --leads 0.2 --out bench/results/aim_probe_planted.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, write_json  # noqa: E402
from bench.eval_compress import make_tome, planted_library, realdocs_library  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    from bench.qa import realdocs
    from retrieval import aim
    from retrieval.narrow import best_per_book, page_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--docs", default="r-data,r-faq,r-admin,r-intro,bashref")
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--leads", default="0.1,0.2,0.3,0.5", help="shares of the window before the best sentence")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "aim_probe.json")
    ap.add_argument("--part", choices=["realdocs", "planted"], default="realdocs")
    ap.add_argument("--pages", type=int, default=12, help="planted: pages per book (as eval_compress's)")
    args = ap.parse_args(argv)

    if args.part == "planted":
        from bench.qa import planted

        work = args.work / args.model / f"planted{args.pages}"
        tome = make_tome(args.model, work, 1)
        qset, by_id = planted_library(tome, work, args.pages)
        grade, chosen = planted.grade, sorted(by_id)
    else:
        tome = make_tome(args.model, args.work / args.model / "realdocs", 1)
        chosen = args.docs.split(",")
        qset, by_id = realdocs_library(tome, args.batches, chosen)
        grade = realdocs.grade
    books = tome.config.context_books
    ranked, cut = {}, {lead: {} for lead in map(float, args.leads.split(","))}
    default_lead = aim.LEAD
    try:
        for q in qset["questions"]:
            if not all(x in by_id for x in q["docs"]):
                continue
            ds = [by_id[x] for x in q["docs"]]
            ranking = tome.retriever.rank(ds, q["question"])
            hits = list(best_per_book(ranking, {d.id for d in ds}, max(1, min(len(ds), books)), 1))
            pages = [page_text(ranking, h.document_id, h.page_start, tome.store.segments(h.document_id)) for h in hits]
            ranked[q["id"]] = grade("\n".join(h.text for h in hits), q)
            for lead in cut:
                aim.LEAD = lead
                cut[lead][q["id"]] = grade(
                    "\n".join(aim.aimed(h, p, q["question"]) for h, p in zip(hits, pages)), q)
    finally:
        aim.LEAD = default_lead
    out = {"questions": len(ranked), "ranked": sum(ranked.values()),
           "recut": {str(lead): sum(v.values()) for lead, v in cut.items()},
           "moved": {str(lead): {i: v[i] for i in v if v[i] != ranked[i]} for lead, v in cut.items()},
           "default_lead": default_lead, "part": args.part, "docs": chosen, "batches": args.batches}
    print(f"the answer in the passages read, of {out['questions']} questions: as ranked {out['ranked']}")
    for lead, n in out["recut"].items():
        moved = out["moved"][lead]
        print(f"  re-cut, lead {lead}: {n}  (gained {sorted(i for i, v in moved.items() if v)}, "
              f"lost {sorted(i for i, v in moved.items() if not v)})")
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
