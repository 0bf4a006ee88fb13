"""Answers that say nothing: the question restated, no word of an answer.

A small reader (Qwen2.5-0.5B) almost never says "the passages do not say"
(0 abstentions in 132 answers on the real manuals), and its token probabilities
do not tell right answers from wrong ones (AUC 0.48-0.54, docs/RESULTS.md). What
it does when it finds nothing is echo the question: "Setting which environment
variable to NULL makes R load only package base at startup." An answer with no
content word beyond the question's is such an echo; on the real manuals this
marked 5 of 21 wrong answers and none of 45 right ones (9 of 38 wrong, 0 of 94
right with the gold page alone or the retrieved passages).
"""
from __future__ import annotations

import re

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
