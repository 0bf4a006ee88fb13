"""The manuals corpus for the kvzip-fast scorer: Tome's own PDF reader, page groups, never an evaluated manual."""
import pytest

from data import build_manuals as bm
from tests.conftest import make_pdf


def test_documents_are_groups_of_pages_read_by_tome(tmp_path):
    pdf = make_pdf(tmp_path / "Manual.pdf", [f"Page {i} says the option --level{i} sets the depth." for i in range(1, 6)])
    docs = bm.documents(pdf, 2)
    assert [d["id"] for d in docs] == ["Manual/p1", "Manual/p3", "Manual/p5"]
    assert docs[1]["title"] == "Manual pages 3-4"
    assert "--level3" in docs[1]["text"] and "--level4" in docs[1]["text"] and "--level5" not in docs[1]["text"]


def test_the_evaluated_manuals_are_never_training_data(tmp_path, monkeypatch):
    banned = bm.evaluated_names()
    assert {"R-intro.pdf", "R-data.pdf", "R-admin.pdf", "R-FAQ.pdf", "bashref.pdf"} <= banned
    assert not banned & {manual.split("/")[-1] for _, manual, _ in bm.MANUALS}
    monkeypatch.setattr(bm, "MANUALS", [("r-doc-pdf", "usr/share/R/doc/manual/R-data.pdf", "GPL-2+")])
    with pytest.raises(ValueError, match="real-document questions"):
        bm.build(tmp_path / "out", 8, tmp_path / "work")
