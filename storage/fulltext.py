"""Full-text queries from user text: one function in the store (``Store.search_text``), two engines.

SQLite: FTS5 with BM25 (``passages_fts``, porter stemmer over unicode61 tokens).
PostgreSQL: ``to_tsvector('english', text)`` with ``ts_rank_cd`` (cover density).

User text never reaches either query language as syntax. For FTS5 every word
becomes a double-quoted string (FTS5 quoting: nothing inside is an operator),
joined with OR; a term that unicode61 splits, like ``read.table`` or
``bash_history``, is also asked as a phrase ("read table"), so the passage
holding the exact term ranks above ones that hold its parts apart. PostgreSQL
gets the text through ``plainto_tsquery`` (a bound parameter; its own parser
keeps ``read.table`` whole on both sides) with AND turned into OR.
"""
from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+")  # unicode61's tokens: letters and digits; '_' and punctuation separate
_COMPOUND = re.compile(r"[^\W_]+(?:[._:/\-][^\W_]+)+|[^\W_]+(?:_+[^\W_]+)+")

# Words too common to help a ranking (BM25 would weigh them ~0 but they cost time on a big table).
STOPWORDS = frozenset("""
a an and are as at be been but by can could did do does doing for from had has have how i if in into is it
its me my no not of on or our so than that the their them then there these they this those to was we were
what when where which while who whom why will with would you your yes should shall may might must also any
each get gets give given use used using one two about after before more most other some such only same
""".split())


def terms(text: str) -> list[str]:
    """The words of ``text`` worth searching for, lower-cased, in order, without repeats."""
    seen, out = set(), []
    for w in _WORD.findall(text.lower()):
        if w not in STOPWORDS and w not in seen:
            seen.add(w)
            out.append(w)
    return out


def compounds(text: str) -> list[list[str]]:
    """Terms joined by punctuation (``read.table``, ``only.values``, ``bash_history``) as their words."""
    out = []
    for c in _COMPOUND.findall(text.lower()):
        words = _WORD.findall(c)
        if len(words) > 1 and words not in out:
            out.append(words)
    return out


def fts5_query(text: str) -> str:
    """An FTS5 MATCH expression for ``text``: its quoted terms and compound phrases, ORed; "" when none."""
    parts = [f'"{w}"' for w in terms(text)]
    parts += ['"' + " ".join(ws) + '"' for ws in compounds(text)]
    return " OR ".join(parts)
