"""What each UI event does, as plain functions of the service, so tests can call them directly.

Model output is shown as text: it is HTML-escaped before it reaches the
chat, so a model (or a book) cannot inject markup into the page. Status marks
are plain words ("ready", "compressing 12/40", "Error: ..."): no emoji, which
a server without an emoji font would show as boxes.
"""
from __future__ import annotations

import html
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tome import MODES, AnswerUpdate, Tome

LIBRARY_HEADERS = ["ID", "Title", "Pages", "Tokens", "Askable", "Memories on disk", "Status", "Added"]
CHAT_MODES = ("compressed", "uncompressed", "compare")
MODEL_CHOICES = [("Qwen2.5-Coder-0.5B-Instruct (default)", "qwen"), ("SmolLM2-135M-Instruct (fast)", "smollm2")]


@dataclass(frozen=True)
class ChatSettings:
    """One browser session's choices; every field has a default that works untouched."""

    mode: str = "uncompressed"
    ratio: int = 8
    max_new_tokens: int = 256
    temperature: float = 0.0
    cache_policy: str = "auto"  # recent-cache policy (see Tome.policy_choices)
    cache_eviction: float = 0.6  # share of the recent cache the policy drops
    compressor: str = "auto"  # what makes the memories of compressed mode (see Tome.compressor_choices)


def default_settings(tome: Tome) -> ChatSettings:
    # Uncompressed answers first: on the measured sets they are right far more often than answers from
    # training-free memories (docs/COMPRESSION.md); compressed and compare modes are one click away.
    return ChatSettings(mode="uncompressed", ratio=tome.config.ratio, max_new_tokens=tome.config.max_new_tokens,
                        cache_policy=tome.config.cache_policy, cache_eviction=tome.config.cache_eviction,
                        compressor=tome.config.compressor)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def _progress(tome: Tome) -> dict:
    """{document id: JobProgress} of the memories the library makes (configured compressor and ratio)."""
    name, ratio = tome.models.compressor_name(), tome.config.ratio
    return {p.job.document_id: p for p in tome.compression() if p.job.compressor == name and p.job.ratio == ratio}


def library_rows(tome: Tome) -> list[list]:
    """One row per book: askable once stage 1 is done; Status says how far its memories are (with ETA)."""
    rows, progress = [], _progress(tome)
    for d in tome.documents():
        sets = tome.memory_sets(d.id)
        memories = " · ".join(f"{m.ratio}x {_size(m.bytes)}" for m in sorted(sets, key=lambda m: m.ratio))
        rows.append([d.id, d.title, d.pages, d.tokens, "yes" if d.ready else "no", memories or "–",
                     tome.book_status(d, progress), d.created_at.strftime("%Y-%m-%d %H:%M")])
    return rows


def compressing(tome: Tome) -> bool:
    """Whether any book's memories are queued or being made (the library table then refreshes itself)."""
    return any(p.job.active for p in tome.compression())


def cancel(tome: Tome, doc_id: int | float | None) -> str:
    """Stop making a book's memories (its partial files go; the book stays askable uncompressed)."""
    if doc_id is None:
        return "Pick a book first."
    try:
        doc = tome.document(int(doc_id))
    except LookupError as e:
        return str(e)
    if tome.cancel_compression(doc.id):
        return f"Compression of **{html.escape(doc.title)}** cancelled; it stays askable uncompressed."
    return f"**{html.escape(doc.title)}** has no compression to cancel."


def document_choices(tome: Tome) -> list[tuple[str, int]]:
    return [(f"{d.title} ({d.pages} p.)", d.id) for d in tome.documents() if d.ready]


def conversation_choices(tome: Tome) -> list[tuple[str, int]]:
    return [(f"{c.title} · {c.created_at.strftime('%Y-%m-%d %H:%M')}", c.id) for c in tome.conversations()]


def upload(tome: Tome, files: Sequence[str] | None, progress: Callable[[float, str], None] | None = None,
           password: str | None = None) -> str:
    """Ingest each uploaded file; one bad file does not stop the others. Returns a report in Markdown."""
    if not files:
        return "Choose one or more PDF, TXT or MD files first."
    lines = []
    n = len(files)
    for i, f in enumerate(files):
        path = Path(f)

        def step(frac: float, msg: str, i: int = i) -> None:
            if progress:
                progress((i + frac) / n, msg)

        # stage 1 only: the book is askable when this returns; its memories are made by the service's worker
        r = tome.ingest(path, filename=path.name, progress=step, password=password or None, wait=False)
        if r.error:
            lines.append(f"- failed: {html.escape(r.error)}")
        elif r.duplicate:
            lines.append(f"- **{html.escape(r.document.title)}** is already in the library")
        else:
            d = r.document
            later = "; memories queued (see the Status column)" if r.job is not None else ""
            lines.append(f"- added **{html.escape(d.title)}**: {d.pages} pages, {d.tokens:,} tokens, askable now "
                         f"({r.seconds:.1f} s){later}")
    return "\n".join(lines)


def delete(tome: Tome, doc_id: int | float | None) -> str:
    if doc_id is None:
        return "Pick a book first."
    try:
        doc = tome.document(int(doc_id))
        tome.delete(doc.id)
    except LookupError as e:
        return str(e)
    return f"Deleted **{html.escape(doc.title)}**."


def reingest(tome: Tome, doc_id: int | float | None, progress: Callable[[float, str], None] | None = None) -> str:
    if doc_id is None:
        return "Pick a book first."
    try:
        r = tome.reingest(int(doc_id), progress=progress, wait=False)
    except LookupError as e:
        return str(e)
    if r.error:
        return f"Error: {html.escape(r.error)}"
    return (f"**{html.escape(r.document.title)}** read again: {r.document.pages} pages, {r.document.tokens:,} tokens"
            + ("; memories queued." if r.job is not None else "."))


def highlight(snippet: str, terms: Sequence[str]) -> str:
    """``snippet`` HTML-escaped, then each whole-word occurrence of ``terms`` wrapped in <mark>."""
    out = html.escape(snippet)
    words = sorted({html.escape(t) for t in terms if t and t.strip()}, key=len, reverse=True)
    if not words:
        return out
    # not inside an entity the escaping made ("amp" in "&amp;"): no & or # just before
    pattern = re.compile(r"(?<![\w&#])(" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)
    return pattern.sub(r"<mark>\1</mark>", out)


def _source_line(s) -> str:
    score = f" ({s.score:.2f})" if s.score is not None else ""
    snippet = f": “{highlight(s.snippet, getattr(s, 'terms', ()))}”" if s.snippet else ""
    return f"- **{html.escape(s.label())}**{score}{snippet}"


def _plain_history(history: Sequence[dict]) -> list[dict]:
    """Turns to send back to the model: user/assistant text, without the sources/figure notes."""
    return [{"role": m["role"], "content": html.unescape(_text(m["content"]))} for m in history
            if m.get("role") in ("user", "assistant") and not (m.get("metadata") or {}).get("title")]


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Gradio may hand back content as a list of parts
        return " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def figures_line(u: AnswerUpdate) -> str:
    s = u.stats
    slots = s.get("memory_slots", u.context_tokens)  # after a second read context_tokens is the page's text
    what = (f"compressed {s.get('compressor', '')} {s.get('ratio', '')}x · {slots:,} memory slots"
            if u.mode == "compressed"
            else f"uncompressed · {u.context_tokens:,} document tokens")
    if u.mode == "compressed" and s.get("excerpts"):
        n = len(s["excerpts"])
        unit = "page" if s.get("excerpt_unit") == "page" else "passage"
        what += f" + {n} {unit}{'s' if n > 1 else ''} as text"
    if u.mode == "compressed" and s.get("reread"):
        what += f" · re-read as text: {u.context_tokens:,} tokens"
    untrained = " · untrained adapter" if u.mode == "compressed" and not s.get("adapter_trained", True) else ""
    policy = s.get("cache_policy", "full")
    if policy != "full":
        policy += f" {s.get('eviction_rate', 0):.0%} evicted"
    # End-to-end time to first token (store, memories, prompt, first step) where it was measured.
    ttft = (s.get("timing") or {}).get("ttft_s", s.get("ttft_s", 0))
    return (f"{what} · cache {policy} · first token {ttft:.2f} s · {s.get('decode_tok_s', 0):.1f} tok/s · "
            f"KV {_size(s.get('kv_bytes', 0))} · {s.get('new_tokens', 0)} tokens"
            + (f" ({s['accepted']} from drafts)" if s.get("accepted") else "")  # uio/draft.py
            + (" · stopped" if s.get("stopped") else "") + untrained)


def doubt_message(stats: dict) -> dict | None:
    """A note under an answer that restated the question (it found none), that names terms found in nothing it
    read (``tome.doubt.foreign_terms``) or that the model was unsure of (``Config.confidence_floor``); and under
    an answer that came from re-reading the best page. None for other answers."""
    reread = stats.get("reread")
    pages = html.escape("; ".join((reread or {}).get("pages", [])))
    if reread and not stats.get("restates_question") and not stats.get("foreign_terms"):  # the second read found it
        return {"role": "assistant",
                "content": f"The first answer only restated the question; this one comes from re-reading "
                           f"{pages} alone. Check the cited page.",
                "metadata": {"title": "Re-read the best page", "status": "done"}}
    title = "⚠ No clear answer"
    if stats.get("restates_question"):
        text = "The answer only restates the question: the passages read may not hold the answer."
        if reread:
            text = f"The answer only restates the question, also after re-reading {pages} alone: " \
                   "the passages may not hold the answer."
    elif stats.get("foreign_terms"):
        title = "⚠ Named, not read"
        text = (f"The answer names {html.escape(', '.join(stats['foreign_terms']))}, which the passages read do not "
                "contain" + (f", also after re-reading {pages} alone" if reread else "") + ": it may not come from "
                "the books.")
    elif stats.get("low_confidence"):
        text = (f"The model was unsure of this answer (confidence {stats.get('confidence', 0):.2f}): "
                "the passages may not hold it.")
    else:
        return None
    return {"role": "assistant", "content": text + " Check the cited pages.",
            "metadata": {"title": title, "status": "done"}}


def sources_message(u: AnswerUpdate) -> dict:
    """The citations as a collapsible note under the answer: click it to see each passage's start."""
    lines = [_source_line(s) for s in u.sources] or ["- (none)"]
    if u.truncated:
        lines.append(f"- only part of {html.escape(', '.join(u.truncated))} fitted the window")
    return {"role": "assistant", "content": "\n".join(lines) + f"\n\n{figures_line(u)}",
            "metadata": {"title": "Sources: " + "; ".join(html.escape(s.label()) for s in u.sources[:3])
                         + (" …" if len(u.sources) > 3 else ""), "status": "done"}}


def _stream(tome: Tome, mode: str, message: str, turns: list[dict], history: list[dict], doc_ids,
            conversation_id, settings: ChatSettings, stop,
            first: str = "") -> Iterator[tuple[list[dict], int | None, str]]:
    history = history + [{"role": "user", "content": html.escape(message)}, {"role": "assistant", "content": "…"}]
    yield history, conversation_id, first
    notice, u = first, None
    for u in tome.ask([int(d) for d in doc_ids], message, history=turns, conversation_id=conversation_id,
                      max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, stop=stop,
                      mode=mode, ratio=settings.ratio, cache_policy=settings.cache_policy,
                      cache_eviction=settings.cache_eviction, compressor=settings.compressor):
        if u.truncated and "context window" not in notice:
            notice = (notice + " " if notice else "") + (
                "Note: too long for the context window, only the passages closest to the question were read: "
                + html.escape(", ".join(u.truncated)))
        history[-1] = {"role": "assistant", "content": html.escape(u.text) or "…"}
        yield history, u.conversation_id, (notice + " " + html.escape(u.note)).strip() if u.note else notice
    if u is not None:
        doubt = doubt_message(u.stats)
        if doubt:
            history.append(doubt)
        history.append(sources_message(u))
        yield history, u.conversation_id, notice


def _check(message: str, doc_ids) -> str | None:
    if not (message or "").strip():
        return "Type a question."
    if not doc_ids:
        return "Select at least one book in the list above."
    return None


def chat(tome: Tome, message: str, history: list[dict] | None, doc_ids: Sequence[int] | None,
         conversation_id: int | None, stop: threading.Event | None = None,
         settings: ChatSettings | None = None) -> Iterator[tuple[list[dict], int | None, str]]:
    """Stream an answer in one mode: yields (chat history, conversation id, notice) as text arrives."""
    history = list(history or [])
    settings = settings or default_settings(tome)
    problem = _check(message, doc_ids)
    if problem:
        yield history, conversation_id, problem
        return
    mode = settings.mode if settings.mode in MODES else "uncompressed"
    try:
        first = ""
        if mode == "compressed":
            # Memories still being made: answer from the text now rather than refuse or wait minutes.
            pending = tome.memories_pending([int(d) for d in doc_ids], settings.ratio, settings.compressor)
            if pending:
                mode, first = "uncompressed", html.escape("; ".join(pending)) + "; answering uncompressed."
        yield from _stream(tome, mode, message.strip(), _plain_history(history), history, doc_ids,
                           conversation_id, settings, stop, first)
    except (ValueError, LookupError, RuntimeError) as e:  # window, missing memories, not ready: say so
        yield history, conversation_id, f"Error: {html.escape(str(e))}"


def compare(tome: Tome, message: str, left: list[dict] | None, right: list[dict] | None,
            doc_ids: Sequence[int] | None, conversation_id: int | None, stop: threading.Event | None = None,
            settings: ChatSettings | None = None) -> Iterator[tuple[list[dict], list[dict], int | None, str]]:
    """The same question answered compressed (left) then uncompressed (right), each with its figures."""
    left, right = list(left or []), list(right or [])
    settings = settings or default_settings(tome)
    problem = _check(message, doc_ids)
    if problem:
        yield left, right, conversation_id, problem
        return
    message = message.strip()
    try:
        pending = tome.memories_pending([int(d) for d in doc_ids], settings.ratio, settings.compressor)
        if pending:  # nothing to compare yet: the compressed side says why, the uncompressed side answers
            note = html.escape("; ".join(pending)) + "; answering uncompressed only."
            left = left + [{"role": "user", "content": html.escape(message)},
                           {"role": "assistant", "content": note, "metadata": {"title": "Memories not ready"}}]
            for right_now, conversation_id, notice in _stream(tome, "uncompressed", message, _plain_history(right),
                                                               right, doc_ids, conversation_id, settings, stop, note):
                yield left, right_now, conversation_id, notice
            return
        for left_now, conversation_id, notice in _stream(tome, "compressed", message, _plain_history(left), left,
                                                          doc_ids, conversation_id, settings, stop):
            yield left_now, right, conversation_id, notice
        left = left_now
        if stop is not None and stop.is_set():
            return
        for right_now, conversation_id, notice in _stream(tome, "uncompressed", message, _plain_history(right),
                                                           right, doc_ids, conversation_id, settings, stop):
            yield left, right_now, conversation_id, notice
    except (ValueError, LookupError, RuntimeError) as e:
        yield left, right, conversation_id, f"Error: {html.escape(str(e))}"


def open_conversation(tome: Tome, conversation_id: int | None) -> tuple[list[dict], list[dict], list[int]]:
    """A stored conversation as (compressed-or-single history, uncompressed history, its books)."""
    if conversation_id is None:
        return [], [], []
    conv = next((c for c in tome.conversations() if c.id == int(conversation_id)), None)
    if conv is None:
        return [], [], []
    left, right, question = [], [], None
    messages = tome.messages(conv.id)
    both = {m.mode for m in messages if m.role == "assistant"} == {"compressed", "uncompressed"}
    for m in messages:
        if m.role == "user":
            question = {"role": "user", "content": html.escape(m.content)}
            continue
        target = right if both and m.mode == "uncompressed" else left
        if question:
            target.append(question)
        target.append({"role": "assistant", "content": html.escape(m.content)})
        doubt = doubt_message(m.stats)
        if doubt:
            target.append(doubt)
        sources = m.stats.get("sources") or []
        if sources:
            labels = [s["label"] if isinstance(s, dict) else str(s) for s in sources]
            target.append({"role": "assistant", "content": "\n".join(f"- {html.escape(x)}" for x in labels),
                           "metadata": {"title": "Sources", "status": "done"}})
    ready = {d.id for d in tome.documents() if d.ready}
    return left, right, [d for d in conv.document_ids if d in ready]
