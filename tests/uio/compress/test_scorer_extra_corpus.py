"""``python -m uio.train.scorer --extra-corpus``: a second corpus joins training and gets its own agreement figure.

Runs the real command on SmolLM2 with 64-token segments, a few steps, everything under tmp_path."""
import json

import pytest
import torch

from uio.train.scorer import main

PROSE = ("The archive keeps its records in order, and every keeper writes down what was moved and when. "
         "Visitors ask for a book at the desk, wait for it in the reading room, and return it before dark. ")


def corpus(folder, stem: str, docs: int) -> None:
    folder.mkdir(parents=True)
    for split, n in (("train", docs), ("heldout", 1)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                text = f"{stem} {i}. " + PROSE * 4
                f.write(json.dumps({"id": f"{stem}-{split}-{i}", "source": stem, "title": stem, "text": text}) + "\n")


@pytest.mark.slow
def test_extra_corpus_segments_train_and_report_their_own_agreement(tmp_path, smollm2):
    corpus(tmp_path / "corpus", "Prose", 2)
    corpus(tmp_path / "manuals", "Manual", 2)
    log = tmp_path / "log.jsonl"
    common = ["--model", "smollm2", "--corpus", str(tmp_path / "corpus"), "--segments", "2", "--heldout", "1",
              "--segment-len", "64", "--keep-tokens", "32", "--extra-corpus", str(tmp_path / "manuals"),
              "--extra-heldout", "1", "--cache", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"),
              "--log", str(log), "--out", str(tmp_path / "scorer.safetensors")]
    assert main(common + ["--extra-segments", "2", "--steps", "4", "--eval-every", "4", "--ckpt-every", "2"]) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    made = [r["split"] for r in rows if r.get("phase") == "targets"]
    assert made.count("manuals-train") == 2 and made.count("manuals-heldout") == 1 and made.count("train") == 2
    done = next(r for r in rows if r.get("phase") == "targets-done")
    assert (done["train"], done["heldout"], done["extra_heldout"]) == (4, 1, 1)  # 2 prose + 2 manual segments
    evals = [r for r in rows if r.get("phase") in ("train", "saved") and "manuals_agree8" in r]
    assert [r["phase"] for r in evals] == ["train", "saved"]  # the last step's figures, then the saved file's
    assert all(0.0 <= r[k] <= 1.0 for r in evals for k in ("agree8", "agree32", "manuals_agree8", "manuals_agree32"))
    # --evaluate reads the cached targets of both held-out sets and logs both figures
    assert main(common + ["--evaluate", str(tmp_path / "scorer.safetensors")]) == 0
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["phase"] == "evaluate" and last["extra_heldout"] == 1 and "manuals_agree32" in last
    # --init fine-tunes that file: its agreement is logged first (= --evaluate's), its feature statistics are
    # kept (not re-measured), the weights move, and the saved file names where it started
    from uio.compress.scorer import KVScorer

    start = KVScorer.load(tmp_path / "scorer.safetensors")
    tuned_path = tmp_path / "tuned.safetensors"
    tune = [a if a != str(tmp_path / "scorer.safetensors") else str(tuned_path) for a in common]
    tune[tune.index("--run-dir") + 1] = str(tmp_path / "run-tune")
    assert main(tune + ["--extra-segments", "2", "--init", str(tmp_path / "scorer.safetensors"), "--steps", "2",
                        "--eval-every", "2", "--lr", "0.01"]) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    init = next(r for r in rows if r.get("phase") == "init")
    assert (init["agree8"], init["manuals_agree32"]) == (last["agree8"], last["manuals_agree32"])
    tuned = KVScorer.load(tuned_path)
    sd0, sd1 = start.state_dict(), tuned.state_dict()
    stats = [k for k in sd0 if k.endswith(("mean", "inv_std"))]
    assert stats and all(torch.equal(sd0[k], sd1[k]) for k in stats)
    assert any(not torch.equal(sd0[k], sd1[k]) for k in sd0 if k not in stats)
    from safetensors import safe_open

    with safe_open(str(tuned_path), framework="pt") as f:
        assert json.loads(f.metadata()["trained"])["init"] == str(tmp_path / "scorer.safetensors")
