"""Plain prose out of the markup documentation ships in: HTML, reStructuredText, POD; prose and English filters.

Used by ``data/build_corpus.py``; kept apart so the builder reads as sources -> documents -> corpus.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser


# -- cleaning -------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?:;)\"']$")


def prose_paragraphs(paragraphs: list[str]) -> list[str]:
    """Paragraphs that read as prose: several words, mostly letters."""
    out = []
    for p in paragraphs:
        p = " ".join(p.split())
        words = p.split()
        if len(words) < 6:
            continue
        letters = sum(c.isalpha() or c == " " for c in p)
        if letters < 0.8 * len(p):
            continue  # code, tables, numbers
        out.append(p)
    return out


def prose_share(paragraphs: list[str], total_chars: int) -> float:
    sentences = sum(len(p) for p in paragraphs if _SENTENCE_END.search(p) and len(p.split()) >= 8)
    return sentences / max(1, total_chars)


class _HTMLText(HTMLParser):
    """Paragraph texts of an HTML page; skips code, tables, navigation and page furniture."""

    BLOCK = {"p", "div", "li", "dd", "dt", "h1", "h2", "h3", "h4", "h5", "h6", "br", "tr", "section", "blockquote",
             "td", "th", "title", "ul", "ol", "dl"}
    SKIP = {"script", "style", "pre", "table", "head", "nav", "footer", "header"}
    SKIP_CLASSES = ("navheader", "navfooter", "toc", "sidebar", "sphinxsidebar", "related", "footer", "header",
                    "highlight", "literallayout", "programlisting", "screen", "synopsis", "cmdsynopsis", "index")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.buf: list[str] = []
        self.skip_stack: list[str] = []  # tags opened inside a skipped element (to find its end)

    def _flush(self) -> None:
        text = "".join(self.buf).strip()
        if text:
            self.paragraphs.append(text)
        self.buf = []

    def handle_starttag(self, tag, attrs):
        if self.skip_stack:
            if tag not in ("br", "img", "hr", "meta", "link", "input", "col", "wbr"):
                self.skip_stack.append(tag)
            return
        cls = dict(attrs).get("class") or ""
        if tag in self.SKIP or any(c in cls.split() for c in self.SKIP_CLASSES):
            self._flush()
            if tag not in ("br", "img", "hr"):
                self.skip_stack.append(tag)
            return
        if tag in self.BLOCK:
            self._flush()

    def handle_endtag(self, tag):
        if self.skip_stack:
            if tag in self.skip_stack:
                while self.skip_stack and self.skip_stack.pop() != tag:
                    pass
            return
        if tag in self.BLOCK:
            self._flush()

    def handle_data(self, data):
        if not self.skip_stack:
            self.buf.append(data)

    def close(self):
        super().close()
        self._flush()


def html_paragraphs(markup: str) -> list[str]:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    return parser.paragraphs


_RST_ROLE = re.compile(r":[\w:+-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")
_RST_REF = re.compile(r"`([^`]+)`_+")
_RST_LITERAL = re.compile(r"``([^`]+)``")
_RST_EMPH = re.compile(r"\*\*?([^*]+)\*\*?")
_RST_SUB = re.compile(r"\|([\w -]+)\|")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>_.:])\1{2,}\s*$")


def rst_paragraphs(text: str) -> list[str]:
    """Top-level (unindented) paragraphs of reStructuredText, inline markup reduced to its text.

    Indented blocks are code, directive bodies or block quotes of examples: dropped.
    """
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines or lines[0][:1] in (" ", "\t") or lines[0].startswith(".."):
            continue
        if any(_UNDERLINE.match(ln.strip()) for ln in lines) or lines[0].lstrip()[:1] in "+|":
            continue  # titles and tables
        p = " ".join(ln.strip() for ln in lines)
        for rx in (_RST_ROLE, _RST_LINK, _RST_REF, _RST_LITERAL, _RST_EMPH, _RST_SUB):
            p = rx.sub(r"\1", p)
        p = p.replace("::", ":").strip()
        if p != ":":  # a lone "::" introduces a literal block
            out.append(p)
    return out


_POD_CODE = re.compile(r"[A-Z]<+\s*([^<>]*?)\s*>+")


def pod_paragraphs(text: str) -> list[str]:
    """Ordinary paragraphs of Perl POD: commands and verbatim (indented) blocks dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        if not block.strip() or block[:1] in (" ", "\t", "="):
            continue
        p = " ".join(block.split())
        for _ in range(3):  # nested formatting codes
            p = _POD_CODE.sub(lambda m: m.group(1).split("|")[0], p)
        out.append(p)
    return out


_ENGLISH = frozenset("the of and to a in is that it for as with be on by this are or not from which".split())


def english_share(text: str) -> float:
    """Share of words that are common English function words (~0.3 in English prose, ~0 otherwise)."""
    words = text.lower().split()
    return sum(w in _ENGLISH for w in words) / max(1, len(words))
