"""The Gradio app builds, and its handlers work when called directly."""
import gradio as gr

from tests.conftest import make_pdf
from ui import handlers
from ui.app import build_app


def test_app_builds_with_library_and_chat(tome_tiny):
    app = build_app(tome_tiny)
    assert isinstance(app, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"upload", "library", "books", "chat", "question", "ask-btn", "stop-btn"} <= ids


def test_upload_reports_each_file_and_goes_on_after_a_bad_one(tome_tiny, tmp_path):
    good = make_pdf(tmp_path / "good.pdf", ["Alpha page.", "Beta page."])
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"this is not a pdf at all")
    seen = []
    report = handlers.upload(tome_tiny, [str(bad), str(good)], lambda f, m: seen.append(f))
    lines = report.splitlines()
    assert lines[0].startswith("- ❌ bad.pdf: not a PDF")
    assert lines[1].startswith("- ✅ **good**: 2 pages")
    assert seen == sorted(seen) and seen[-1] == 1.0
    rows = handlers.library_rows(tome_tiny)
    assert [r[1:4] for r in rows] == [["good", 2, rows[0][3]]] and rows[0][3] > 0
    assert handlers.document_choices(tome_tiny) == [("good (2 p.)", rows[0][0])]
    assert "already in the library" in handlers.upload(tome_tiny, [str(good)])


def test_chat_streams_and_ends_with_sources(tome_tiny, tmp_path):
    r = tome_tiny.ingest(make_pdf(tmp_path / "g.pdf", ["Gulls nest on page one."]))
    steps = list(handlers.chat(tome_tiny, "Where do gulls nest?", [], [r.document.id], None))
    history, conv, notice = steps[-1]
    assert history[0] == {"role": "user", "content": "Where do gulls nest?"}
    assert history[1]["role"] == "assistant" and history[1]["content"]
    assert history[2]["metadata"]["title"] == "Sources and figures"
    assert "g, p. 1" in history[2]["content"] and "first token" in history[2]["content"]
    assert conv is not None and notice == ""
    # A follow-up in the same conversation sends the earlier turn (not the sources note) back.
    steps = list(handlers.chat(tome_tiny, "And then?", history, [r.document.id], conv))
    assert steps[-1][1] == conv
    assert [m.role for m in tome_tiny.store.messages(conv)] == ["user", "assistant"] * 2


def test_chat_asks_for_a_book_and_a_question(tome_tiny):
    assert list(handlers.chat(tome_tiny, "Hi?", [], [], None))[-1][2].startswith("Select at least one")
    assert list(handlers.chat(tome_tiny, "  ", [], [1], None))[-1][2] == "Type a question."


def test_delete_handler(tome_tiny, tmp_path):
    r = tome_tiny.ingest(make_pdf(tmp_path / "d.pdf", ["Delete me."]))
    assert handlers.delete(tome_tiny, r.document.id) == "Deleted **d**."
    assert handlers.library_rows(tome_tiny) == []
    assert "no document" in handlers.delete(tome_tiny, r.document.id)
