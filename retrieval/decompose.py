"""A question that asks two things at once, split into its parts, each to be searched on its own.

"Which R function reads CSV files, and which gnuplot command sets the separator?"
ranks gnuplot's pages by the whole question, where the R half's words (read, files)
outweigh the gnuplot half's: the gnuplot page that answers it came 6th to 15th in its
own book for 6 of 10 such questions on the real manuals (docs/RESULTS.md, Retrieval).
Each part searched alone puts it near the top. The split is on a coordinating
"and"/";" that starts a new question ("..., and which ..."), so a single question
with an "and" inside ("R and Bash") stays whole.
"""
from __future__ import annotations

import re

_WH = r"(?:which|what|who|whom|whose|where|when|why|how|does|do|did|is|are|was|were|can)"
_SPLIT = re.compile(rf"\s*(?:;|,?\s*\band\b)\s+(?={_WH}\b)", re.IGNORECASE)
MIN_WORDS = 3  # a shorter part ("and why?") has nothing of its own to search for


def parts(question: str) -> list[str]:
    """The sub-questions of ``question`` when it asks two or more things, else [] (search it whole)."""
    pieces = [p.strip(" ,;") for p in _SPLIT.split(question)]
    pieces = [p for p in pieces if len(p.split()) >= MIN_WORDS]
    return pieces if len(pieces) >= 2 else []
