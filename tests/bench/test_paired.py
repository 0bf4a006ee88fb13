"""bench/paired.py: the paired comparison of two answer runs (McNemar's exact p, a bootstrap interval)."""
import json
import math

import pytest


def write_run(folder, tag: str, method: str, rows: dict[str, bool], other: bool = False) -> None:
    """A results file of one cell (``other``: and a second, empty cell of another method)."""
    cells = {"k": {"method": method, "rows": [{"id": i, "correct": c} for i, c in rows.items()]}}
    if other:
        cells["other"] = {"method": "retrieval", "rows": []}
    (folder / f"eval_compress_qwen_realdocs_{tag}.json").write_text(json.dumps({"cells": cells}))


def test_mcnemar_exact_matches_the_binomial_tail():
    from bench.paired import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0  # an even split can't be uneven
    assert mcnemar_exact(3, 0) == pytest.approx(2 / 8)  # 2 * P(X <= 0), X ~ Bin(3, 1/2)
    want = 2 * sum(math.comb(23, i) for i in range(7)) / 2 ** 23  # 17 against 6
    assert mcnemar_exact(17, 6) == pytest.approx(want) and mcnemar_exact(6, 17) == pytest.approx(want)
    assert 0.03 < want < 0.04


def test_paired_counts_and_an_interval_around_the_difference():
    from bench.paired import paired

    a = {f"q{i}": i < 60 for i in range(100)}  # 60 right
    b = {f"q{i}": 10 <= i < 60 or i >= 95 for i in range(100)}  # 55 right: 10 only in A, 5 only in B
    r = paired(a, b)
    assert (r.n, r.a, r.b, r.only_a, r.only_b) == (100, 60, 55, 10, 5)
    assert r.diff_points == pytest.approx(5.0)
    assert r.ci[0] < 5.0 < r.ci[1] and 12 < r.ci[1] - r.ci[0] < 18  # normal approx.: ±7.5 points
    assert paired(a, b) == r  # the interval is reproducible
    same = paired(a, a)
    assert same.ci == (0.0, 0.0) and same.p_mcnemar == 1.0


def test_runs_of_different_questions_are_refused():
    from bench.paired import paired

    with pytest.raises(ValueError, match="different questions"):
        paired({"q1": True, "q2": False}, {"q1": True, "q3": False})


def test_a_side_joins_runs_first_run_first(tmp_path, monkeypatch):
    import bench.paired as bp

    write_run(tmp_path, "one", "m@8", {"q1": True, "q2": False}, other=True)
    write_run(tmp_path, "two", "m@8", {"q2": True, "q3": True}, other=True)
    monkeypatch.setattr("bench.eval_compress.RESULTS_DIR", tmp_path)
    assert bp.load_side("qwen", "realdocs", "one,two:m@8") == {"q1": True, "q2": False, "q3": True}
    with pytest.raises(ValueError, match="0 cells match"):
        bp.load_side("qwen", "realdocs", "one:nothing@8")
    with pytest.raises(FileNotFoundError):
        bp.load_side("qwen", "realdocs", "absent:m@8")


def test_within_and_outside_split_the_questions_and_share_reads_a_ratio(tmp_path, monkeypatch, capsys):
    import bench.paired as bp

    write_run(tmp_path, "c", "m@8", {"fit1": True, "fit2": True, "big1": True, "big2": False})
    write_run(tmp_path, "r", "retrieval", {"fit1": False, "fit2": True, "big1": False, "big2": False})
    write_run(tmp_path, "f", "full", {"fit1": True, "fit2": True})  # the full-text cell asked only the books that fit
    monkeypatch.setattr("bench.eval_compress.RESULTS_DIR", tmp_path)
    assert bp.restrict({"a": True, "b": False}, {"a"}) == {"a": True}
    assert bp.restrict({"a": True, "b": False}, {"a"}, keep=False) == {"b": False}

    bp.main(["realdocs", "c:m@8", "f:full", "--within", "f:full", "--share", "0.9"])
    out = capsys.readouterr().out
    assert "| c:m@8 | f:full | 2 | 2 | 2 |" in out and "100% as many" in out and ": met" in out
    bp.main(["realdocs", "c:m@8", "r:retrieval", "--outside", "f:full", "--target", "10"])
    out = capsys.readouterr().out
    assert "| 2 | 1 | 0 | 1 | 0 | +50.0 |" in out  # big1 and big2 only
    bp.main(["realdocs", "r:retrieval", "f:full", "--within", "f:full", "--share", "0.9"])
    assert "missed by 1" in capsys.readouterr().out  # 1 right against 0.9 * 2 -> 2 needed


def test_a_partial_cell_is_read_when_no_whole_one_matches(tmp_path, monkeypatch):
    import bench.paired as bp

    rows = [{"id": "q1", "correct": True}, {"id": "q2", "correct": False}]
    data = {"cells": {}, "partial": {"k": {"method": "full", "rows": rows, "n": 2, "n_planned": 5}}}
    (tmp_path / "eval_compress_qwen_realdocs_p.json").write_text(json.dumps(data))
    monkeypatch.setattr("bench.eval_compress.RESULTS_DIR", tmp_path)
    assert bp.load_side("qwen", "realdocs", "p:full") == {"q1": True, "q2": False}
