"""Books the benchmarks make on the spot: seeded pseudo-English prose in real PDFs (fpdf2).

Generated text keeps every benchmark self-contained (nothing fetched) and
repeatable (same seed, same book).
"""
from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the harbour keeper light tide boat stone wall morning evening storm rope lantern island "
         "north south wind wave gull market village road bridge river field winter summer house "
         "window door letter book chapter reader voice silence night fire water salt bread").split()


def prose(rng: random.Random, words: int, words_list: list[str] = WORDS, longest: int = 18) -> str:
    """``words`` words of sentences of 8..``longest`` words drawn from ``words_list``."""
    out, sentence = [], []
    for _ in range(words):
        sentence.append(rng.choice(words_list))
        if len(sentence) >= rng.randint(8, longest):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    return " ".join(out)


def write_pdf(path: Path, pages: list[str], title: str | None = None) -> Path:
    """One text block per page, core Helvetica font."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 5, text)
    pdf.output(str(path))
    return path


def make_book(path: Path, pages: int, words_per_page: int = 380, seed: int = 0) -> Path:
    rng = random.Random(seed)
    return write_pdf(path, [prose(rng, words_per_page) for _ in range(pages)])
