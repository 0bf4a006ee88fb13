"""Full-text queries from user text: one function in the store (``Store.search_text``), two engines.

SQLite: FTS5 with BM25 (``passages_fts``, porter stemmer over unicode61 tokens).
PostgreSQL: BM25 computed in SQL from the generated ``tsv`` column
(``to_tsvector('english', text)``, GIN-indexed): term frequencies from the
lexemes' positions, document frequencies counted through the index, length
as the passage's number of lexemes. PostgreSQL's own ``ts_rank_cd`` has no
inverse document frequency: on the real manuals it put the gold page in the
top 3 for 64 % of the questions against 95 % for BM25 (bench/eval_retrieval.py).

User text never reaches either query language as syntax. For FTS5 every word
becomes a double-quoted string (FTS5 quoting: nothing inside is an operator),
joined with OR; a term that unicode61 splits, like ``read.table`` or
``bash_history``, is also asked as a phrase ("read table"), so the passage
holding the exact term ranks above ones that hold its parts apart. PostgreSQL
gets the text through ``plainto_tsquery`` (a bound parameter; its own parser
keeps ``read.table`` whole on both sides); its lexemes are ORed.
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


BM25_K1, BM25_B = 1.2, 0.75  # FTS5's bm25() defaults

# :q user text, :ids documents searched, :k rows, :k1/:b BM25 parameters. Statistics (N, df, average
# length) are over every passage, like FTS5's.
POSTGRES_BM25 = """
WITH terms AS MATERIALIZED (
    SELECT DISTINCT lexeme AS t, quote_literal(lexeme)::tsquery AS q
    FROM unnest(to_tsvector('english', :q))
), stats AS MATERIALIZED (
    SELECT count(*)::float8 AS n, coalesce(avg(length(tsv)), 1)::float8 AS avglen FROM passages
), weights AS MATERIALIZED (
    SELECT terms.t, ln((stats.n - df.df + 0.5) / (df.df + 0.5) + 1.0) AS idf
    FROM terms CROSS JOIN stats
    CROSS JOIN LATERAL (SELECT count(*)::float8 AS df FROM passages p WHERE p.tsv @@ terms.q) df
), anyterm AS MATERIALIZED (
    SELECT string_agg(quote_literal(t), ' | ')::tsquery AS q FROM terms
), scored AS (
    SELECT p.document_id, p.idx,
           (SELECT sum(w.idf * (tf * (:k1 + 1)) / (tf + :k1 * (1 - :b + :b * greatest(length(p.tsv), 1) / stats.avglen)))
            FROM (SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1)::float8 AS tf FROM unnest(p.tsv) u) x
            JOIN weights w ON w.t = x.lexeme) AS score
    FROM passages p, anyterm, stats
    WHERE p.tsv @@ anyterm.q AND p.document_id IN :ids
)
SELECT document_id, idx, score FROM scored ORDER BY score DESC, document_id, idx LIMIT :k
"""
