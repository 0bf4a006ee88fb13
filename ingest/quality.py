"""How readable extracted text is, so a bad extraction can be detected and another extractor tried.

pypdf sometimes loses the spaces between words (common with XeTeX PDFs):
the text then has few ordinary words and many very long "words".
"""
from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
# The most frequent English words: any real prose is full of them, merged text has almost none.
COMMON = frozenset("""the of and to a in is it you that he was for on are with as i his they be at one have
this from or had by not word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long make
thing see him two has look more day could go come did number sound no most people my over know water than
call first who may down side been now find any new work part take get place made live where after back
little only round man year came show every good me give our under name very through just form sentence
great think say help low line differ turn cause much mean before move right boy old too same tell does set
three want air well also play small end put home read hand port large spell add even land here must big
high such follow act why ask men change went light kind off need house picture try us again animal point
mother world near build self earth father should into its between while upon""".split())


def text_quality(text: str) -> float:
    """0..1: share of common English words, discounted by the share of run-together 'words'."""
    tokens = text.split()
    if not tokens:
        return 0.0
    words = [w.lower() for t in tokens for w in _WORD.findall(t)]
    common = sum(w in COMMON for w in words) / max(1, len(tokens))
    merged = sum(len(t) > 25 for t in tokens) / len(tokens)
    return max(0.0, min(1.0, common * 2.5) - 5 * merged)


def looks_merged(text: str) -> bool:
    """True when prose extraction probably lost its word spaces."""
    return len(text) >= 400 and text_quality(text) < 0.3  # short texts say too little to judge
