"""Pass-key retrieval: a 5-digit key hidden in filler at a chosen relative depth.

    text, key = passkey_document(tokenizer, n_tokens=4096, depth=0.5, seed=0)
    info = passkey_pdf("/tmp/pk.pdf", tokenizer, n_tokens=4096, depth=0.5, seed=0)
    grade(model_answer, key)          # QUESTION = "What is the pass key?"

The classic format (Mohtashami & Jaggi, "Landmark Attention", 2023): an instruction line, the
filler "The grass is green. The sky is blue. ..." repeated, and somewhere in it
"The pass key is 12345. Remember it. 12345 is the pass key." The document does not contain the
question; ask QUESTION after it (or use ``prompt``).

``n_tokens`` is exact for the given tokenizer: ``count_tokens(tokenizer, text) == n_tokens``
(no special tokens). A tokenizer is anything with ``encode(text)`` returning a list of ids or an
object with ``.ids`` (Hugging Face ``PreTrainedTokenizer``/``tokenizers.Tokenizer``), or a
callable ``text -> list``. The key starts after ``depth`` of the filler (0 = right after the
instruction line, 1 = at the very end).
"""
from __future__ import annotations

import random
from pathlib import Path

from bench.qa.grading import contains

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_SENTENCE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key?"
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# single words tried last, to land on the exact length when a filler word would overshoot
_PADS = ("so", "and", "it", "we", "go", "yes", "on", "a", "the", "of", "to", "in")


def count_tokens(tokenizer, text: str) -> int:
    enc = getattr(tokenizer, "encode", None)
    if callable(enc):
        try:
            ids = enc(text, add_special_tokens=False)
        except TypeError:
            ids = enc(text)
    elif callable(tokenizer):
        ids = tokenizer(text)
    else:
        raise TypeError("tokenizer needs an encode(text) method or must be callable")
    ids = getattr(ids, "ids", ids)
    if isinstance(ids, dict):  # BatchEncoding from tokenizer(text)
        ids = ids["input_ids"]
    return len(ids)


def make_key(seed: int) -> str:
    return str(random.Random(seed).randint(10000, 99999))


def _filler(n_words: int, start: int = 0) -> list[str]:
    words = FILLER.split()
    return [words[(start + i) % len(words)] for i in range(n_words)]


def _assemble(before: list[str], key: str, after: list[str]) -> str:
    parts = [INSTRUCTION]
    if before:
        parts.append(" ".join(before))
    parts.append(KEY_SENTENCE.format(key=key))
    if after:
        parts.append(" ".join(after))
    return " ".join(parts)


def passkey_document(tokenizer, n_tokens: int, depth: float, seed: int = 0) -> tuple[str, str]:
    """Return (text, key): exactly ``n_tokens`` tokens with the key sentence at relative ``depth``."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError("depth must be within [0, 1]")
    key = make_key(seed)
    count = lambda t: count_tokens(tokenizer, t)  # noqa: E731
    base = count(_assemble([], key, []))
    if n_tokens < base:
        raise ValueError(f"n_tokens={n_tokens} is below the {base} tokens of the instruction and key")
    budget = n_tokens - base
    probe = 400
    per_word = max(count(" ".join(_filler(probe))) / probe, 1e-6)
    n_before = round(depth * budget / per_word) if depth > 0 else 0
    n_after = round((1 - depth) * budget / per_word) if depth < 1 else 0
    before = _filler(n_before)
    # the side whose length is tuned: after the key, unless the key must be last
    tune_after = depth < 1.0
    after = _filler(n_after, start=n_before)

    def text() -> str:
        return _assemble(before, key, after)

    side = after if tune_after else before
    start = n_before if tune_after else 0
    # coarse-to-fine: jump by the estimated number of words, then single words
    seen: dict[int, int] = {}
    for _ in range(200):
        c = count(text())
        if c == n_tokens:
            return text(), key
        if seen.get(len(side), 0) >= 2:
            break  # oscillating by one word around the target
        seen[len(side)] = seen.get(len(side), 0) + 1
        step = round((n_tokens - c) / per_word) or (1 if c < n_tokens else -1)
        if step > 0:
            side.extend(_filler(step, start=start + len(side)))
        else:
            del side[max(len(side) + step, 0):]
    # exact landing with short pad words: drop words until under, then add pads that fit
    while side and count(text()) > n_tokens:
        side.pop()
    for _ in range(64):
        c = count(text())
        if c == n_tokens:
            return text(), key
        for pad in _PADS:
            side.append(pad)
            if count(text()) <= n_tokens:
                break
            side.pop()
        else:
            break
    raise ValueError(f"could not reach exactly {n_tokens} tokens with this tokenizer (got {count(text())})")


def key_depth(tokenizer, text: str, key: str) -> float:
    """Where the key sentence starts, as a share of the filler (instruction and key not counted)."""
    sentence = KEY_SENTENCE.format(key=key)
    i = text.index(sentence)
    before = count_tokens(tokenizer, text[:i].rstrip()) - count_tokens(tokenizer, INSTRUCTION)
    total = count_tokens(tokenizer, text) - count_tokens(tokenizer, INSTRUCTION) - count_tokens(tokenizer, sentence)
    return before / total if total > 0 else 0.0


def prompt(text: str) -> str:
    return f"{text}\n\n{QUESTION} The pass key is"


def question(key: str, doc_id: str = "passkey", page: int | None = None) -> dict:
    """The question in the schema of realdocs.json."""
    q = {"id": f"{doc_id}-q", "question": QUESTION, "answers": [key], "docs": [doc_id],
         "kind": "single", "style": "exact-term"}
    q["gold"] = [{"doc": doc_id, "page": page}] if page is not None else []
    return q


def grade(answer_text: str, key_or_question) -> bool:
    """True when the answer contains the 5-digit key as a whole number ("123456" is not "12345")."""
    key = key_or_question["answers"][0] if isinstance(key_or_question, dict) else str(key_or_question)
    return contains(answer_text, key)


def passkey_pdf(path: str | Path, tokenizer, n_tokens: int, depth: float, seed: int = 0,
                words_per_page: int = 350, title: str = "Notes") -> dict:
    """Write the pass-key document as a PDF (fpdf2), ``words_per_page`` words a page, the key
    sentence never split across pages. Returns {path, key, depth, n_tokens, pages, key_page, text}.
    Text read back from the PDF differs in line breaks, so its token count may differ slightly.
    The title says nothing of the key: Tome shows titles to the model (a title "Pass key 2048 tokens
    depth 1.0" was once answered as the key)."""
    import datetime as _dt

    from fpdf import FPDF

    text, key = passkey_document(tokenizer, n_tokens, depth, seed)
    sentence = KEY_SENTENCE.format(key=key)
    head, tail = text.split(sentence, 1)
    units = head.split() + [sentence] + tail.split()  # the key sentence is one unit
    pages, current, words, key_page = [], [], 0, 0
    for u in units:
        w = len(u.split())
        if current and words + w > words_per_page:
            pages.append(" ".join(current))
            current, words = [], 0
        if u == sentence:
            key_page = len(pages) + 1
        current.append(u)
        words += w
    if current:
        pages.append(" ".join(current))
    pdf = FPDF()
    pdf.set_creation_date(_dt.datetime(2024, 1, 1, tzinfo=_dt.timezone.utc))
    pdf.set_title(title)
    pdf.set_font("Helvetica", size=11)
    for page in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, page)
    pdf.output(str(path))
    return {"path": str(path), "key": key, "depth": depth, "n_tokens": n_tokens, "pages": len(pages),
            "key_page": key_page, "text": text}


class WhitespaceTokenizer:
    """Stand-in tokenizer (one token per whitespace-separated word) with the HF encode interface."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return text.split()
