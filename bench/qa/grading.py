"""Answer matching shared by every question set: normalised token containment.

Text and answers are turned into tokens: runs of letters, and numbers (digits with inner dots
or thousands commas, so "43.663" and "3.6.0" stay whole). Case, whitespace and punctuation do not
count; a number only matches the same number ("43.66" is not "43.663", "12" is not "128").
An answer matches when its tokens occur as a contiguous run in the text's tokens.
"""
from __future__ import annotations

import re
import unicodedata

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = _THOUSANDS.sub("", text)  # 3,750 -> 3750
    # a comma left between digits separates numbers ("1,2,3"); dots stay inside them
    return [t for tok in _TOKEN.findall(text) for t in (tok.split(",") if tok[0].isdigit() else [tok]) if t]


def normalize(text: str) -> str:
    return " ".join(tokens(text))


def contains(text: str, answer: str) -> bool:
    """True when ``answer`` occurs in ``text`` after normalisation; an answer with no tokens never matches."""
    needle = tokens(answer)
    if not needle:
        return False
    hay = tokens(text)
    n = len(needle)
    first = needle[0]
    return any(hay[i] == first and hay[i:i + n] == needle for i in range(len(hay) - n + 1))


def matches_any(text: str, answers: list[str]) -> bool:
    return any(contains(text, a) for a in answers)


def grade(answer_text: str, question: dict) -> bool:
    """A question with ``answer_parts`` (one list of alternatives per gold page) needs every part;
    otherwise any of ``answers`` will do."""
    parts = question.get("answer_parts")
    if parts:
        return all(matches_any(answer_text, alts) for alts in parts)
    return matches_any(answer_text, question["answers"])
