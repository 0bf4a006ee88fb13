"""Real-world hard PDFs (encryption, scans, fuzz cases, broken content streams): a clear message or text."""
import pytest

from ingest import IngestError, read_document
from ingest.quality import looks_merged, text_quality
from tests.pdf_corpus import corpus, pdf

ENC = "resources/encryption"


@pytest.mark.parametrize("name, password, outcome", [
    ("r2-user-password.pdf", None, "encrypted; give its password"),
    ("r2-user-password.pdf", "asdfzxcv", "pdf encryption test"),
    ("r4-user-password.pdf", "wrong", "the password is wrong"),
    ("r6-both-passwords.pdf", "foo", "pdf encryption test"),  # the owner password opens it too
    ("r5-empty-password.pdf", None, "pdf encryption test"),  # AES-256, empty user password
    ("r6-empty-password.pdf", "not needed", "pdf encryption test"),
])
def test_encrypted_pdfs(name, password, outcome):
    path = pdf("pypdf", f"{ENC}/{name}")
    if "pdf encryption test" in outcome:
        assert outcome in read_document(path, password=password).pages[0].text
    else:
        with pytest.raises(IngestError, match=outcome):
            read_document(path, password=password)


@pytest.mark.parametrize("rel, message", [
    ("tests/resources/congress.pdf", "no text layer.*OCR it first"),  # a scanned image
    ("tests/resources/fuzz/378014596.pdf", "damaged or truncated"),
    ("tests/resources/newline-buffer-test.pdf", "no pages"),
    ("tests/resources/graph-encrypted.pdf", "encrypted"),
])
def test_unreadable_pdfs_say_why(rel, message):
    with pytest.raises(IngestError, match=message):
        read_document(pdf("pikepdf", rel))


def test_broken_content_streams_keep_the_readable_pages():
    doc = read_document(pdf("pikepdf", "tests/resources/content-stream-errors.pdf"))
    assert len(doc.pages) == 4 and "Potato" in doc.pages[0].text


def test_every_corpus_pdf_gives_text_or_our_error():
    """No hostile file may escape as another exception type (or hang: pytest's timeout is CI's)."""
    files = sorted(corpus().rglob("*.pdf"))
    assert len(files) > 100
    outcomes = {"ok": 0, "refused": 0}
    for f in files:
        try:
            doc = read_document(f)
            assert any(p.text for p in doc.pages)
            outcomes["ok"] += 1
        except IngestError as e:
            assert str(e).startswith(f.name + ":")
            outcomes["refused"] += 1
    assert outcomes["ok"] > 30 and outcomes["refused"] > 10


def test_merged_words_are_detected():
    prose = ("The keeper of the light walked along the sea wall every evening and counted the boats "
             "that came back into the harbour before the storm. ") * 5
    merged = prose.replace(" ", "")[:2000]
    merged = " ".join(merged[i:i + 60] for i in range(0, len(merged), 60))
    assert text_quality(prose) > 0.6 and not looks_merged(prose)
    assert text_quality(merged) < 0.1 and looks_merged(" ".join([merged] * 3))


def test_a_better_extractor_replaces_merged_text(tmp_path):
    """When pypdf's text has lost its spaces, pdftotext or pypdf's layout mode is used instead."""
    from pypdf import PdfReader

    from ingest.pages import Page, _best_extraction
    from tests.conftest import make_pdf

    prose = ("The keeper of the light walked along the sea wall every evening and counted the boats "
             "that came back into the harbour before the storm. ") * 6
    path = make_pdf(tmp_path / "book.pdf", [prose, prose])
    merged = [Page(1, prose.replace(" ", "")), Page(2, prose.replace(" ", ""))]  # what a XeTeX PDF gives
    pages, extractor = _best_extraction(path, PdfReader(path), merged, None)
    assert extractor in ("pdftotext", "pypdf-layout") and "keeper of the light" in " ".join(pages[0].text.split())
    good = [Page(1, prose), Page(2, prose)]
    assert _best_extraction(path, PdfReader(path), good, None) == (good, "pypdf")
