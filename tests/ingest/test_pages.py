"""File -> pages: real PDFs made with fpdf2 and read with pypdf, text files, and the errors users see."""
import random

import pytest

from ingest import IngestError, read_document
from ingest.pages import normalize_text
from tests.conftest import make_pdf

SENTENCES = ["The lighthouse keeper counted seven boats.",
             "A storm broke over the northern cliffs.",
             "By morning the harbour was calm again."]


def _encrypted_pdf(path, text, user_password):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    pdf.set_encryption(owner_password="o", user_password=user_password)
    pdf.add_page()
    pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


# -- PDFs that read ---------------------------------------------------------------

def test_three_page_pdf_gives_three_numbered_pages_with_their_text(tmp_path):
    doc = read_document(make_pdf(tmp_path / "storm.pdf", SENTENCES, title="The Storm"))
    assert doc.kind == "pdf" and doc.extractor == "pypdf"
    assert [p.number for p in doc.pages] == [1, 2, 3]
    for page, sentence in zip(doc.pages, SENTENCES):
        assert sentence in page.text
    # each sentence is on its own page only
    assert SENTENCES[1] not in doc.pages[0].text and SENTENCES[0] not in doc.pages[2].text
    assert doc.title == "The Storm"
    assert doc.text_chars == sum(len(p.text) for p in doc.pages) >= sum(len(s) for s in SENTENCES)


def test_title_falls_back_to_the_file_stem(tmp_path):
    path = make_pdf(tmp_path / "harbour-notes.pdf", SENTENCES[:1])
    assert read_document(path).title == "harbour-notes"
    # the name given by the caller (the uploaded file's name) wins over the path on disk
    assert read_document(path, title="Upload Name.pdf").title == "Upload Name"


def test_empty_pages_keep_their_numbers(tmp_path):
    doc = read_document(make_pdf(tmp_path / "gaps.pdf", [SENTENCES[0], "", SENTENCES[2]]))
    assert [p.number for p in doc.pages] == [1, 2, 3]
    assert doc.pages[1].text == "" and SENTENCES[2] in doc.pages[2].text


# -- normalize_text ---------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("we \ufb01nd the \ufb02ow", "we find the flow"),  # fi / fl ligatures
    ("an exam-\nple of it", "an example of it"),  # hyphenated across lines
    ("soft\u00adhyphen", "softhyphen"),
    ("many   spaces\t\tand\u00a0tabs", "many spaces and tabs"),
    ("  padded line  \n  next  ", "padded line\nnext"),
    ("one\n\n\n\n\ntwo", "one\n\ntwo"),
    ("one\n\ntwo", "one\n\ntwo"),  # a paragraph break stays
    ("dos\r\nline\rmac", "dos\nline\nmac"),
    ("nul\x00byte", "nulbyte"),
    ("  \n\n  ", ""),
])
def test_normalize_text(raw, clean):
    assert normalize_text(raw) == clean


# -- refusals ---------------------------------------------------------------------

def test_zero_byte_file_is_refused(tmp_path):
    path = tmp_path / "empty.pdf"
    path.write_bytes(b"")
    with pytest.raises(IngestError, match=r"^empty\.pdf: the file is empty"):
        read_document(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(IngestError, match="file not found"):
        read_document(tmp_path / "nowhere.pdf")


def test_random_bytes_named_pdf_are_not_a_pdf(tmp_path):
    data = random.Random(1234).randbytes(4096)
    assert b"%PDF-" not in data
    path = tmp_path / "x.pdf"
    path.write_bytes(data)
    with pytest.raises(IngestError, match=r"^x\.pdf: not a PDF"):
        read_document(path)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
def test_truncated_pdf_is_damaged(tmp_path, fraction):
    """pypdf cannot open a cut-off fpdf2 file (no xref, no EOF marker): our message, never pypdf's type."""
    data = make_pdf(tmp_path / "whole.pdf", SENTENCES).read_bytes()
    path = tmp_path / "cut.pdf"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(IngestError, match=r"^cut\.pdf: the PDF is damaged or truncated"):
        read_document(path)


def test_pdf_with_only_empty_pages_has_no_text_layer(tmp_path):
    path = make_pdf(tmp_path / "scan.pdf", ["", ""])
    with pytest.raises(IngestError, match="no text layer.*OCR"):
        read_document(path)


def test_file_over_max_bytes_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"word " * ((2**20 + 5000) // 5))
    with pytest.raises(IngestError, match=r"big\.txt: the file is 1\.0 MB, over the limit of 1 MB"):
        read_document(path, max_bytes=2**20)
    pdf = make_pdf(tmp_path / "small.pdf", SENTENCES)
    size = pdf.stat().st_size
    with pytest.raises(IngestError, match="over the limit"):
        read_document(pdf, max_bytes=size - 1)
    assert len(read_document(pdf, max_bytes=size).pages) == 3  # exactly at the limit is fine


def test_encrypted_pdf_needs_its_password(tmp_path):
    path = _encrypted_pdf(tmp_path / "locked.pdf", "Secret harbour charts.", user_password="secret")
    with pytest.raises(IngestError, match="encrypted; give its password"):
        read_document(path)
    with pytest.raises(IngestError, match="encrypted; the password is wrong"):
        read_document(path, password="guess")
    doc = read_document(path, password="secret")
    assert [p.text for p in doc.pages] == ["Secret harbour charts."]
    assert read_document(path, password="o").pages[0].text == "Secret harbour charts."  # owner password too


def test_encrypted_pdf_with_empty_user_password_opens_without_one(tmp_path):
    path = _encrypted_pdf(tmp_path / "restricted.pdf", "Printing is restricted.", user_password="")
    assert read_document(path).pages[0].text == "Printing is restricted."
    assert read_document(path, password="not needed").pages[0].text == "Printing is restricted."


# -- text and Markdown ----------------------------------------------------------------

def test_text_file_form_feeds_split_pages(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\ufeffFirst page,  with spaces.\fSecond page.\n\n\n\nStill second.\fThird.", encoding="utf-8")
    doc = read_document(path)
    assert doc.kind == "text" and doc.extractor == "text" and doc.title == "notes"
    assert [(p.number, p.text) for p in doc.pages] == [
        (1, "First page, with spaces."), (2, "Second page.\n\nStill second."), (3, "Third.")]


def test_markdown_without_form_feed_is_one_page(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# Title\n\nSome *markdown* text.\n", encoding="utf-8")
    doc = read_document(path)
    assert doc.title == "README" and [(p.number, p.text) for p in doc.pages] == [
        (1, "# Title\n\nSome *markdown* text.")]


def test_non_utf8_text_is_refused(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e".encode("latin-1"))
    with pytest.raises(IngestError, match=r"^latin\.txt: not valid UTF-8"):
        read_document(path)


def test_text_file_of_whitespace_has_no_text(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text(" \n\f\t\n", encoding="utf-8")
    with pytest.raises(IngestError, match="contains no text"):
        read_document(path)


def test_unknown_binary_suffix_is_refused(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    with pytest.raises(IngestError, match="not a PDF, text or Markdown file"):
        read_document(path)
