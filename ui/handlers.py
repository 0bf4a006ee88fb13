"""What each UI event does, as plain functions of the service, so tests can call them directly."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tome import AnswerUpdate, Tome

LIBRARY_HEADERS = ["ID", "Title", "Pages", "Tokens", "Status", "Added"]


def library_rows(tome: Tome) -> list[list]:
    return [[d.id, d.title, d.pages, d.tokens, d.status, d.created_at.strftime("%Y-%m-%d %H:%M")]
            for d in tome.documents()]


def document_choices(tome: Tome) -> list[tuple[str, int]]:
    return [(f"{d.title} ({d.pages} p.)", d.id) for d in tome.documents() if d.status == "ready"]


def upload(tome: Tome, files: Sequence[str] | None,
           progress: Callable[[float, str], None] | None = None) -> str:
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

        r = tome.ingest(path, filename=path.name, progress=step)
        if r.error:
            lines.append(f"- ❌ {r.error}")
        elif r.duplicate:
            lines.append(f"- ↺ **{r.document.title}** is already in the library")
        else:
            d = r.document
            lines.append(f"- ✅ **{d.title}**: {d.pages} pages, {d.tokens:,} tokens ({r.seconds:.1f} s)")
    return "\n".join(lines)


def delete(tome: Tome, doc_id: int | float | None) -> str:
    if doc_id is None:
        return "Pick a book to delete."
    try:
        doc = tome.document(int(doc_id))
        tome.delete(doc.id)
    except LookupError as e:
        return str(e)
    return f"Deleted **{doc.title}**."


def _source_line(s) -> str:
    score = f" ({s.score:.2f})" if s.score is not None else ""
    snippet = f": “{s.snippet}”" if s.snippet else ""
    return f"- {s.label()}{score}{snippet}"


def _plain_history(history: Sequence[dict]) -> list[dict]:
    """Turns to send back to the model: user/assistant text, without the sources/figure notes."""
    return [{"role": m["role"], "content": _text(m["content"])} for m in history
            if m.get("role") in ("user", "assistant") and not (m.get("metadata") or {}).get("title")]


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Gradio may hand back content as a list of parts
        return " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def figures_line(u: AnswerUpdate) -> str:
    s = u.stats
    return (f"{u.mode} · {u.context_tokens:,} context tokens · first token {s.get('ttft_s', 0):.2f} s · "
            f"{s.get('decode_tok_s', 0):.1f} tok/s · {s.get('new_tokens', 0)} tokens"
            + (" · stopped" if s.get("stopped") else ""))


def chat(tome: Tome, message: str, history: list[dict] | None, doc_ids: Sequence[int] | None,
         conversation_id: int | None, stop: threading.Event | None = None
         ) -> Iterator[tuple[list[dict], int | None, str]]:
    """Stream an answer: yields (chat history, conversation id, notice) as text arrives."""
    history = list(history or [])
    message = (message or "").strip()
    if not message:
        yield history, conversation_id, "Type a question."
        return
    if not doc_ids:
        yield history, conversation_id, "Select at least one book in the list above."
        return
    turns = _plain_history(history)
    history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": "…"}]
    yield history, conversation_id, ""
    notice, u = "", None
    for u in tome.ask([int(d) for d in doc_ids], message, history=turns, conversation_id=conversation_id,
                      stop=stop):
        if u.truncated and not notice:
            notice = ("⚠️ Too long for the context window, only the passages closest to the question were read: "
                      + ", ".join(u.truncated))
        history[-1] = {"role": "assistant", "content": u.text or "…"}
        yield history, u.conversation_id, notice
    if u is None:
        return
    sources = "\n".join(_source_line(s) for s in u.sources) or "- (none)"
    history.append({"role": "assistant", "content": f"{sources}\n\n{figures_line(u)}",
                    "metadata": {"title": "Sources and figures", "status": "done"}})
    yield history, u.conversation_id, notice
