"""bench/plot_training.py reads the term it is asked for from a run's metrics.jsonl."""
import json

from bench.plot_training import main, read


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_read_picks_the_metric_skips_steps_without_it_and_keeps_a_resumed_steps_last_value(tmp_path):
    log = tmp_path / "metrics.jsonl"
    _write(log, [
        {"step": 0, "heldout_kl": 0.39, "heldout_answer_ce": 0.51},
        {"step": 1, "kl": 0.30, "answer_ce": 0.80},
        {"step": 2, "kl": 0.20},  # no QA probe in this batch
        {"step": 2, "kl": 0.25},  # the same step again after a resume
        {"step": 3, "kl": 0.10, "answer_ce": 0.40, "heldout_kl": 0.35, "heldout_answer_ce": 0.45},
    ])
    assert read(log) == ([(1, 0.30), (2, 0.25), (3, 0.10)], [(0, 0.39), (3, 0.35)])
    assert read(log, "answer_ce") == ([(1, 0.80), (3, 0.40)], [(0, 0.51), (3, 0.45)])


def test_main_writes_a_plot_of_the_answer_cross_entropy(tmp_path):
    log = tmp_path / "run" / "metrics.jsonl"
    log.parent.mkdir()
    _write(log, [{"step": s, "answer_ce": 1.0 / (s + 1), "heldout_answer_ce": 0.5} for s in range(5)])
    out = tmp_path / "plot.png"
    main([str(log), "--metric", "answer_ce", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
