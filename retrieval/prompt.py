"""Put document text into a chat prompt: which segments fit the budget, and the messages.

This is the "uncompressed" context: raw segment text in the window. Which
segments go in is decided by ``retrieval.select.select_segments`` (everything when
it fits, else the segments closest to the question); ``fit_budget`` is the
older rule, leading segments of each book in equal shares, kept for callers
that have no scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

SYSTEM_PROMPT = (
    "You answer questions about the documents given below. Answer from their text, briefly and "
    "precisely. If the documents do not contain the answer, say that they do not."
)

# The prompt when passages carry their pages: each block is labelled with its book and page.
PAGED_PROMPT = (
    "You answer questions using only the passages below; each is labelled [book, page]. Answer from "
    "their text, briefly and precisely. If the passages do not contain the answer, say that they do not."
)

MEMORY_PROMPT = (
    "You answer questions about documents you have just read; their content comes before this "
    "conversation. Answer from them, briefly and precisely. If they do not contain the answer, say so. "
    "Documents: "
)


class TextSegment(Protocol):
    text: str
    page_start: int
    page_end: int

    @property
    def n_tokens(self) -> int: ...


def page_parts(text: str, breaks: Sequence[tuple[int, int]]) -> list[tuple[int, str]]:
    """(page, text) of each page's part of a segment's ``text``, given where each page starts in it
    (``breaks``: (character offset, page)); empty parts dropped."""
    starts = [0] + [b for b, _ in breaks[1:]]  # text before the first passage goes with its page
    ends = starts[1:] + [len(text)]
    parts = [(page, text[a:b].strip()) for (_, page), a, b in zip(breaks, starts, ends)]
    return [(page, t) for page, t in parts if t]


@dataclass(frozen=True)
class Passage:
    """A segment chosen for the prompt, with the book it comes from."""

    title: str
    segment: TextSegment
    score: float | None = None  # similarity to the question, when the selector ranked it
    match: object | None = None  # the segment's best-matching passage (retrieval.retriever.Retrieved), if ranked
    breaks: tuple[tuple[int, int], ...] = ()  # (character offset, page) where each page starts in its text

    @property
    def pages(self) -> str:
        a, b = self.segment.page_start, self.segment.page_end
        return f"p. {a}" if a == b else f"pp. {a}-{b}"

    def labelled(self) -> str:
        """The segment's text labelled [book, p. N] at its start and [p. N] wherever a new page starts."""
        if not self.breaks:
            return f"[{self.title}, {self.pages}]\n{self.segment.text}"
        parts = page_parts(self.segment.text, self.breaks)
        return "\n\n".join((f"[{self.title}, p. {page}]" if k == 0 else f"[p. {page}]") + f"\n{t}"
                             for k, (page, t) in enumerate(parts))


EXCERPTS_HEADER = "\n\nPassages that may hold the answer, word for word, labelled [book, page]:\n\n"
# Compressed mode's shorter instructions (``memory_prompt="short"``): the passages follow with their labels alone,
# ~36 tokens fewer before the first token than MEMORY_PROMPT + the books' names + EXCERPTS_HEADER.
SHORT_MEMORY_PROMPT = ("Answer from the documents you have read and the passages below, briefly and precisely. "
                       "If they do not hold the answer, say so.")
MEMORY_PROMPTS = ("long", "short")
EXCERPT_PLACES = ("system", "user")  # where build_messages may put compressed mode's excerpts


@dataclass(frozen=True)
class Excerpt:
    """A passage given as text beside compressed memories (``Config.memory_excerpts``)."""

    title: str
    page: int
    text: str
    document_id: int | None = None
    segment: int | None = None  # index of the segment it comes from

    def labelled(self) -> str:
        return f"[{self.title}, p. {self.page}]\n{self.text}"


@dataclass(frozen=True)
class Selection:
    passages: list[Passage]
    truncated: list[str]  # titles of books that did not fit whole

    @property
    def tokens(self) -> int:
        return sum(p.segment.n_tokens for p in self.passages)


def fit_budget(books: Sequence[tuple[str, Sequence[TextSegment]]], budget: int) -> Selection:
    """Choose leading segments of each book so that the total stays within ``budget`` tokens."""
    # Smallest books first, so a short book's unused share passes to the longer ones.
    order = sorted(range(len(books)), key=lambda i: sum(s.n_tokens for s in books[i][1]))
    kept: dict[int, list[TextSegment]] = {}
    left = budget
    for rank, i in enumerate(order):
        share = left // (len(order) - rank)
        used, chosen = 0, []
        for seg in books[i][1]:
            if used + seg.n_tokens > share:
                break
            chosen.append(seg)
            used += seg.n_tokens
        kept[i] = chosen
        left -= used
    passages = [Passage(books[i][0], s) for i in range(len(books)) for s in kept[i]]
    truncated = [books[i][0] for i in range(len(books)) if len(kept[i]) < len(books[i][1])]
    return Selection(passages, truncated)


def build_messages(selection: Selection, question: str, history: Sequence[dict] = (),
                   memory_of: Sequence[str] = (), memory_marker: str | None = None,
                   excerpts: Sequence[Excerpt] = (), excerpts_in: str = "system",
                   memory_prompt: str = "long", head_marker: str = "") -> list[dict]:
    """System prompt with the passages, then earlier turns, then the question.

    With ``memory_of`` (compressed mode) the documents are not in the text: they are memories in the
    cache. Without ``memory_marker`` they come before this prompt and the system prompt only names them;
    with it, the system prompt is the uncompressed one with each book's title followed by the marker,
    where its memories go (``uio.generate.split_chat``). ``excerpts`` (compressed mode): passages given
    as text, labelled [book, p. N]: after the documents in the system message (``excerpts_in="system"``)
    or in the question's own message, before it (``"user"``). ``memory_prompt="short"``: with excerpts in the
    system message and the memories before it, ``SHORT_MEMORY_PROMPT`` and the labelled passages only.
    ``head_marker`` (compressed mode without ``memory_marker``): put where the system message's instructions end,
    before any passage; the memories go there (``Config.memory_layout="head"``).
    """
    if excerpts_in not in EXCERPT_PLACES:
        raise ValueError(f"excerpts_in must be one of {EXCERPT_PLACES}, not {excerpts_in!r}")
    if memory_prompt not in MEMORY_PROMPTS:
        raise ValueError(f"memory_prompt must be one of {MEMORY_PROMPTS}, not {memory_prompt!r}")
    if memory_of and excerpts and not memory_marker and excerpts_in == "system" and memory_prompt == "short":
        system = SHORT_MEMORY_PROMPT + head_marker + "\n\n" + "\n\n".join(e.labelled() for e in excerpts)
        return [{"role": "system", "content": system}] + _turns(history, question)
    if memory_of and memory_marker:
        docs = "\n\n".join(f"[{t}]\n{memory_marker}" for t in memory_of)
        system = f"{SYSTEM_PROMPT}\n\nDocuments:\n\n{docs}"
    elif memory_of:
        system = MEMORY_PROMPT + " ".join(f"[{t}]" for t in memory_of) + head_marker
    passages = EXCERPTS_HEADER + "\n\n".join(e.labelled() for e in excerpts) if memory_of and excerpts else ""
    if passages and excerpts_in == "system":
        system += passages
    if not memory_of:
        blocks = [p.labelled() for p in selection.passages]
        docs = "\n\n".join(blocks) if blocks else "(no documents selected)"
        if any(p.breaks for p in selection.passages):
            system = f"{PAGED_PROMPT}\n\nPassages:\n\n{docs}"
        else:
            system = f"{SYSTEM_PROMPT}\n\nDocuments:\n\n{docs}"
    if passages and excerpts_in == "user":
        question = f"{passages.strip()}\n\nQuestion: {question}"
    return [{"role": "system", "content": system}] + _turns(history, question)


def _turns(history: Sequence[dict], question: str) -> list[dict]:
    """The earlier turns (user and assistant only), then the question."""
    return [{"role": m["role"], "content": m["content"]} for m in history
            if m.get("role") in ("user", "assistant")] + [{"role": "user", "content": question}]


def count_tokens(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"])
