"""How sure is a difference between two answer runs on the same questions?

Two cells of ``bench/eval_compress.py`` results that asked the same questions (e.g. compressed mode and
retrieval) are paired question by question. The table gives both scores, the questions only one of them
answered, the difference in points with a paired bootstrap 95 % interval, and McNemar's exact p-value
(two-sided; the binomial test on the discordant questions). A target such as "retrieval + 10 points" can
then be read against the interval, not against one count.

    .venv/bin/python bench/paired.py realdocs all122x:kvzip-fast@8/x1 all122r:retrieval [--target 10]

A side is ``TAG:METHOD`` (the cell whose method is METHOD in
``bench/results/eval_compress_<model>_<part>_<TAG>.json``), or ``TAG1,TAG2,...:METHOD`` for a side whose
questions ran in several runs (a question found in more than one of them counts from the first).

Issue 18's real-manual target has two branches: where a book fits the model's window, compressed answers
should reach 90 % of the full-text score; where it does not, retrieval + 10 points. A full-text cell asks
only the questions whose books fit, so it splits the set:

    .venv/bin/python bench/paired.py realdocs t24qa:kvzip-fast@8/x1 fullfit:full/fullcache --share 0.9 \
        --within fullfit:full/fullcache
    .venv/bin/python bench/paired.py realdocs t24qa:kvzip-fast@8/x1 all170s2:retrieval --target 10 \
        --outside fullfit:full/fullcache
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass

from bench.eval_compress import part_path


@dataclass(frozen=True)
class Paired:
    n: int
    a: int  # right in A
    b: int  # right in B
    only_a: int
    only_b: int
    diff_points: float  # (a - b) / n * 100
    ci: tuple[float, float]  # bootstrap 95 % interval of diff_points
    p_mcnemar: float


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the chance of a split of the discordant questions at least this
    uneven if either side were as likely to win each one."""
    m = only_a + only_b
    if m == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def paired(a: dict[str, bool], b: dict[str, bool], draws: int = 20000, seed: int = 0) -> Paired:
    """Compare two runs given as question id -> right; both must hold the same questions."""
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))
        raise ValueError(f"the runs asked different questions ({len(missing)} differ, e.g. {missing[:3]})")
    if not a:
        raise ValueError("no questions")
    ids = sorted(a)
    d = [int(a[i]) - int(b[i]) for i in ids]
    n = len(d)
    rng = random.Random(seed)  # fixed: the interval is reproducible
    boots = sorted(sum(rng.choices(d, k=n)) / n * 100 for _ in range(draws))
    lo, hi = boots[int(0.025 * draws)], boots[int(0.975 * draws) - 1]
    only_a, only_b = d.count(1), d.count(-1)
    return Paired(n=n, a=sum(map(int, a.values())), b=sum(map(int, b.values())), only_a=only_a, only_b=only_b,
                  diff_points=sum(d) / n * 100, ci=(lo, hi), p_mcnemar=mcnemar_exact(only_a, only_b))


def load_side(model: str, part: str, side: str) -> dict[str, bool]:
    """``TAG[,TAG...]:METHOD`` -> question id -> right, from those runs' results files (the first run that
    asked a question gives its answer)."""
    tags, _, method = side.partition(":")
    rows: dict[str, bool] = {}
    for tag in tags.split(","):
        for qid, right in _load_run(model, part, tag, method).items():
            rows.setdefault(qid, right)
    return rows


def _load_run(model: str, part: str, tag: str, method: str) -> dict[str, bool]:
    path = part_path(model, part, tag)
    if not path.exists():
        raise FileNotFoundError(f"no results file {path}")
    data = json.loads(path.read_text())
    cells = data["cells"]
    found = [c for c in cells.values() if c.get("method") == method] if method else list(cells.values())
    if not found:  # an interrupted cell's answered questions (bench/eval_compress.py keeps them as "partial")
        found = [c for c in data.get("partial", {}).values() if c.get("method") == method]
        for c in found[:1]:
            print(f"({path.name}: {method} is partial, {c['n']} of {c['n_planned']} questions)", file=sys.stderr)
    if len(found) != 1:
        names = sorted(c.get("method") for c in cells.values())
        raise ValueError(f"{path.name}: {len(found)} cells match {method!r}; its methods: {names}")
    return {r["id"]: bool(r["correct"]) for r in found[0]["rows"]}


def restrict(rows: dict[str, bool], ids: set[str], keep: bool = True) -> dict[str, bool]:
    """``rows`` of the questions in ``ids`` (``keep``) or of the others."""
    return {q: right for q, right in rows.items() if (q in ids) == keep}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", help="results part: realdocs, planted, passkey")
    ap.add_argument("a", help="TAG:METHOD of the first run (e.g. all122x:kvzip-fast@8/x1)")
    ap.add_argument("b", help="TAG:METHOD of the second run (e.g. all122r:retrieval)")
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--target", type=float, default=None, help="a target difference in points to read against")
    ap.add_argument("--share", type=float, default=None,
                    help="a target share of B's score for A (0.9: A right on >= 90 %% as many questions as B)")
    scope = ap.add_mutually_exclusive_group()
    scope.add_argument("--within", metavar="TAG:METHOD",
                       help="only the questions this run asked (e.g. a full-text cell: the books that fit)")
    scope.add_argument("--outside", metavar="TAG:METHOD", help="only the questions this run did not ask")
    args = ap.parse_args(argv)
    try:
        a, b = load_side(args.model, args.part, args.a), load_side(args.model, args.part, args.b)
        if args.within or args.outside:
            asked = set(load_side(args.model, args.part, args.within or args.outside))
            a, b = (restrict(x, asked, keep=bool(args.within)) for x in (a, b))
        r = paired(a, b)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"paired: {e}")
    print("| A | B | n | A right | B right | only A | only B | A − B (points) | 95 % interval | McNemar p |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.a} | {args.b} | {r.n} | {r.a} | {r.b} | {r.only_a} | {r.only_b} | {r.diff_points:+.1f} "
          f"| {r.ci[0]:+.1f} to {r.ci[1]:+.1f} | {r.p_mcnemar:.3f} |")
    if args.target is not None:
        t = args.target
        where = ("below the interval" if t < r.ci[0] else "above the interval" if t > r.ci[1]
                 else "inside the interval")
        print(f"\ntarget {t:+.1f} points: {where}")
    if args.share is not None:
        need = math.ceil(args.share * r.b - 1e-9)  # the fewest right answers that reach the share
        verdict = "met" if r.a >= need else f"missed by {need - r.a}"
        share = f"{r.a / r.b:.0%}" if r.b else "-"
        print(f"\nA right on {share} as many questions as B (target {args.share:.0%}: {need} right): {verdict}")


if __name__ == "__main__":
    main()
