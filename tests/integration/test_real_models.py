"""End to end with the real embedded models: a planted fact must come back in the answer."""
import subprocess
import sys

import pytest

from tests.conftest import MODELS_DIR, ROOT, make_pdf

FILLER = ("The harbour town wakes early. Fishing boats leave before dawn and the market opens "
          "when they return. Visitors walk along the sea wall and watch the gulls. ")
FACT = "The lighthouse keeper of Varrow Point is named Ilse Marrick."
QUESTION = "What is the name of the lighthouse keeper of Varrow Point?"


def _book(tmp_path):
    pages = [FILLER * 4, FILLER * 2 + FACT + " " + FILLER * 2, FILLER * 4]
    return make_pdf(tmp_path / "varrow.pdf", pages, title="Varrow Point")


@pytest.mark.slow
def test_smollm2_answers_from_the_uncompressed_book(tome_smol, tmp_path):
    r = tome_smol.ingest(_book(tmp_path))
    assert r.ok and r.document.title == "Varrow Point" and r.document.pages == 3
    final = list(tome_smol.ask([r.document.id], QUESTION))[-1]
    assert "Ilse Marrick" in final.text
    assert final.truncated == [] and final.sources[0].label() == "Varrow Point, p. 2"  # the fact's page
    # the answer copies the page: tokens drafted from the prompt were kept (uio/draft.py), and the figures say so
    from ui.handlers import figures_line

    assert final.stats["accepted"] > 0 and final.stats["policy"] == "full"
    assert f"({final.stats['accepted']} from drafts)" in figures_line(final)


@pytest.mark.slow
def test_qwen_default_answers_from_the_uncompressed_book(qwen, tmp_path):
    from tome import Config, Tome

    tome = Tome(Config(data_dir=tmp_path / "data", models_dir=MODELS_DIR, max_new_tokens=30), lm=qwen)
    r = tome.ingest(_book(tmp_path))
    final = list(tome.ask([r.document.id], QUESTION))[-1]
    assert "Ilse Marrick" in final.text
    assert final.stats["cache_policy"] == "gate" and final.stats["accepted"] > 0  # drafts under the gate too


@pytest.mark.slow
def test_cli_ingest_list_ask(tmp_path):
    env = {"TOME_DATA_DIR": str(tmp_path / "d"), "TOME_MODELS_DIR": str(MODELS_DIR), "TOME_MODEL": "smollm2",
           "TOME_MAX_NEW_TOKENS": "30", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = lambda *a: subprocess.run([sys.executable, "app.py", *a], cwd=ROOT, env=env, capture_output=True,
                                    text=True, timeout=300)
    bad = tmp_path / "notes.pdf"
    bad.write_bytes(b"\x00\x01garbage")
    r = run("ingest", str(_book(tmp_path)), str(bad))
    assert r.returncode == 1, r.stderr
    assert "varrow.pdf: #1 'Varrow Point', 3 pages" in r.stdout
    assert "error: notes.pdf: not a PDF" in r.stderr
    r = run("list")
    assert r.returncode == 0 and "Varrow Point" in r.stdout and "3 pages" in r.stdout
    r = run("ask", "--doc", "varrow point", QUESTION)
    assert r.returncode == 0, r.stderr
    assert "Ilse Marrick" in r.stdout and "sources: Varrow Point, p. 2" in r.stderr
    r = run("ask", "--doc", "Missing Book", QUESTION)
    assert r.returncode == 2 and "no document 'Missing Book'" in r.stderr
