"""Answers that say nothing (the question restated, no word of an answer) or name what they did not read.

A small reader (Qwen2.5-0.5B) almost never says "the passages do not say"
(0 abstentions in 132 answers on the real manuals), and its token probabilities
do not tell right answers from wrong ones (AUC 0.48-0.54, docs/RESULTS.md). What
it does when it finds nothing is echo the question: "Setting which environment
variable to NULL makes R load only package base at startup." An answer with no
content word beyond the question's is such an echo; on the real manuals this
marked 5 of 21 wrong answers and none of 45 right ones (9 of 38 wrong, 0 of 94
right with the gold page alone or the retrieved passages). Or it names a
neighbouring term it knows (`cat` for `writeLines`): a term in none of the
texts it read is marked for the user to check (``foreign_terms``).
"""
from __future__ import annotations

import re
from typing import Sequence

# Function words and the reader's own framing ("according to the passage"): never the answer.
_STOP = frozenset("""
a an the of to in on at for from by with as and or but not no nor so than then this that these those it its
is are was were be been being do does did done can could should would may might must will shall has have had
which what who whom whose where when why how one ones there here according passage passages document documents
text manual book page pages section answer question you your use used using also only
""".split())
_WORD = re.compile(r"[\w.$~/()\-+*%]+")


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` that could carry an answer (function words dropped)."""
    out = set()
    for w in _WORD.findall(text or ""):
        w = w.lower().strip(".,;:()`'\"")
        if w and w not in _STOP:
            out.add(w)
    return out


def restates_question(answer: str, question: str) -> bool:
    """True when ``answer`` adds no content word to ``question``: it restates it (or is empty)."""
    return not (content_words(answer) - content_words(question))


# A term an answer names as code: in backticks, a dotted or underscored name (read.table, R_LIBS, $PIPESTATUS),
# a call (sink()), or a name in capitals (HISTCONTROL).
_TERM = re.compile(r"`([^`\n]+)`|(?<![\w.$])(\$?[A-Za-z_]\w*(?:[._]\w+)+(?:\(\))?|\$?[A-Z][A-Z0-9_]{2,}\b|"
                   r"[A-Za-z_]\w*\(\))")
_PART = re.compile(r"[a-z0-9]+")


def foreign_terms(answer: str, read: Sequence[str]) -> list[str]:
    """The terms ``answer`` names as code that occur in none of the texts ``read`` (the question among them):
    the reader named them without reading them. Case, punctuation and spacing between a term's parts do not
    count (``R_LIBS`` is in "r libs"); its parts must stand whole and in order."""
    hay = "\n".join(read).lower()
    out: list[str] = []
    for quoted, bare in _TERM.findall(answer or ""):
        term = (quoted or bare).strip()
        parts = _PART.findall(term.lower())
        if not parts or term in out:
            continue
        pattern = r"(?<![a-z0-9])" + r"[^a-z0-9]*".join(map(re.escape, parts)) + r"(?![a-z0-9])"
        if not re.search(pattern, hay):
            out.append(term)
    return out
