"""Read a file into pages of clean text: PDF (pypdf), plain text or Markdown."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import IngestError
from ingest.quality import looks_merged, text_quality

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text"}


@dataclass(frozen=True)
class Page:
    number: int  # 1-based, as a reader counts pages
    text: str


@dataclass(frozen=True)
class Extracted:
    title: str
    pages: list[Page]
    kind: str  # "pdf" or "text"
    extractor: str = ""  # "pypdf", "pypdf-layout", "pdftotext" or "text"

    @property
    def text_chars(self) -> int:
        return sum(len(p.text) for p in self.pages)


_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_HYPHEN_BREAK = re.compile(r"(\w)-\n(\w)")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFKC (turns ligatures such as 'ﬁ' into 'fi'), joins words hyphenated across lines, tidies spaces."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u00ad", "").replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\x00", "")
    text = _HYPHEN_BREAK.sub(r"\1\2", text)
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def read_document(path: str | Path, max_bytes: int | None = None, title: str | None = None,
                  password: str | None = None) -> Extracted:
    """Extract the pages of ``path``; raises IngestError with a plain message when it can't."""
    path = Path(path)
    name = title or path.name
    if not path.is_file():
        raise IngestError(f"{name}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise IngestError(f"{name}: the file is empty (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise IngestError(f"{name}: the file is {size / 2**20:.1f} MB, over the limit of {max_bytes / 2**20:.0f} MB")
    with open(path, "rb") as f:
        head = f.read(1024)
    is_text = path.suffix.lower() in TEXT_SUFFIXES
    # A PDF may carry junk before its header, but a text file merely mentioning "%PDF-" is text.
    if (b"%PDF-" in head and not is_text) or head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"%PDF-"):
        return _read_pdf(path, name, password)
    if is_text:
        return _read_text(path, name)
    raise IngestError(f"{name}: not a PDF, text or Markdown file")


def _read_text(path: Path, name: str) -> Extracted:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise IngestError(f"{name}: not valid UTF-8 text") from None
    if "\x00" in text[:4096]:
        raise IngestError(f"{name}: looks like a binary file, not text")
    # A form feed is the plain-text page break; without any, the file is one page.
    pages = [Page(i + 1, normalize_text(chunk)) for i, chunk in enumerate(text.split("\f"))]
    if not any(p.text for p in pages):
        raise IngestError(f"{name}: contains no text")
    return Extracted(title=Path(name).stem, pages=pages, kind="text", extractor="text")


def _read_pdf(path: Path, name: str, password: str | None) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    try:
        reader = PdfReader(path, strict=False)
        if reader.is_encrypted:
            # Many "encrypted" PDFs only restrict printing and open with the empty password.
            # A password given for a file that opens without one is not an error.
            if not ((password and reader.decrypt(password)) or reader.decrypt("")):
                hint = "the password is wrong" if password else "give its password"
                raise IngestError(f"{name}: the PDF is encrypted; {hint}")
        n_pages = len(reader.pages)
    except IngestError:
        raise
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, RecursionError, OSError) as e:
        raise IngestError(f"{name}: the PDF is damaged or truncated and cannot be opened ({e})") from None
    except Exception as e:  # hostile files reach odd corners of pypdf; the user gets our message
        raise IngestError(f"{name}: the PDF cannot be opened ({type(e).__name__}: {e})") from None
    if n_pages == 0:
        raise IngestError(f"{name}: the PDF has no pages")
    pages, failed = [], 0
    for i in range(n_pages):
        try:
            text = reader.pages[i].extract_text() or ""
        except Exception as e:  # pypdf raises many types on broken content streams; one page must not sink the book
            log.warning("%s: page %d unreadable: %s", name, i + 1, e)
            text, failed = "", failed + 1
        pages.append(Page(i + 1, normalize_text(text)))
    if not any(p.text for p in pages):
        if failed == n_pages:
            raise IngestError(f"{name}: the PDF's pages cannot be read (broken content streams)")
        raise IngestError(f"{name}: the PDF has no text layer (scanned or image-only); OCR it first")
    pages, extractor = _best_extraction(path, reader, pages, password)
    return Extracted(title=_pdf_title(reader) or Path(name).stem, pages=pages, kind="pdf", extractor=extractor)


def _best_extraction(path: Path, reader, pages: list[Page], password: str | None) -> tuple[list[Page], str]:
    """pypdf's plain text, unless it lost its word spaces; then the best-reading alternative."""
    sample = "\n".join(p.text for p in pages[:50])
    if not looks_merged(sample):
        return pages, "pypdf"
    candidates = [("pypdf", pages)]
    try:
        layout = [Page(i + 1, normalize_text(pg.extract_text(extraction_mode="layout") or ""))
                  for i, pg in enumerate(reader.pages)]
        candidates.append(("pypdf-layout", layout))
    except Exception as e:  # layout mode is a fallback; its failure is not the book's
        log.info("pypdf layout mode failed: %s", e)
    poppler = _pdftotext(path, len(pages), password)
    if poppler:
        candidates.append(("pdftotext", poppler))
    name, best = max(candidates, key=lambda c: text_quality("\n".join(p.text for p in c[1][:50])))
    log.info("%s: pypdf text looked merged; using %s", path.name, name)
    return best, name


def _pdftotext(path: Path, n_pages: int, password: str | None) -> list[Page] | None:
    """Poppler's pdftotext (Debian poppler-utils), if installed; pages split on form feeds."""
    exe = shutil.which("pdftotext")
    if not exe:
        return None
    cmd = [exe, "-enc", "UTF-8"] + (["-upw", password] if password else []) + [str(path), "-"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=300, check=True).stdout.decode("utf-8", "replace")
    except (subprocess.SubprocessError, OSError) as e:
        log.info("pdftotext failed: %s", e)
        return None
    chunks = out.split("\f")[:n_pages]
    return [Page(i + 1, normalize_text(c)) for i, c in enumerate(chunks)]


def _pdf_title(reader) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # broken metadata is no reason to refuse a readable book
        return None
    title = normalize_text(str(title)) if title else ""
    return title or None
