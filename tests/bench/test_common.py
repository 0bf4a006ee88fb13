"""bench/common.py writes result files readable when small and compact when large (tracked size)."""
import json

from bench.common import COMPACT_ABOVE, result_text, write_json


def test_small_results_are_indented_and_large_ones_compact_and_both_read_back(tmp_path):
    small = {"cells": {"a": [1, 2]}}
    large = {"rows": [{"text": "an answer of some length", "ttft_s": 0.3}] * (COMPACT_ABOVE // 20)}
    assert "\n" in result_text(small)
    text = result_text(large)
    assert "\n" not in text and ": " not in text and len(json.dumps(large, indent=1)) > COMPACT_ABOVE
    for name, payload in (("s.json", small), ("l.json", large)):
        path = write_json(tmp_path / "deep" / name, payload)
        assert json.loads(path.read_text()) == payload
