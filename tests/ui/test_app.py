"""The Gradio app builds, and its handlers work when called directly."""
import gradio as gr

from tests.conftest import make_pdf
from ui import handlers
from ui.app import build_app

UNCOMPRESSED = handlers.ChatSettings(mode="uncompressed", max_new_tokens=6)


def test_app_builds_with_library_chat_compare_and_settings(tome_tiny):
    app = build_app(tome_tiny)
    assert isinstance(app, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"upload", "library", "books", "chat", "chat-raw", "mode", "question", "ask-btn", "stop-btn",
            "past", "confirm-delete", "cache-policy", "cache-eviction"} <= ids


def test_upload_reports_each_file_and_goes_on_after_a_bad_one(tome_tiny, tmp_path):
    good = make_pdf(tmp_path / "good.pdf", ["Alpha page.", "Beta page."])
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"this is not a pdf at all")
    seen = []
    report = handlers.upload(tome_tiny, [str(bad), str(good)], lambda f, m: seen.append(f))
    lines = report.splitlines()
    assert lines[0].startswith("- failed: bad.pdf: not a PDF")  # plain words: no emoji font needed
    assert lines[1].startswith("- added **good**: 2 pages") and "askable now" in lines[1]
    assert "memories queued" in lines[1]
    assert seen == sorted(seen) and seen[-1] == 1.0
    rows = handlers.library_rows(tome_tiny)
    assert len(rows) == 1 and rows[0][1:4] == ["good", 2, rows[0][3]] and rows[0][3] > 0
    # askable at once (stage 1); the memories are queued for the service's worker (stage 2)
    assert rows[0][4] == "yes" and rows[0][5] == "–" and rows[0][6].startswith("queued 0/1")
    assert handlers.compressing(tome_tiny)
    assert handlers.document_choices(tome_tiny) == [("good (2 p.)", rows[0][0])]
    tome_tiny.compress_queued()  # what the worker thread of `app.py serve` does
    rows = handlers.library_rows(tome_tiny)
    assert rows[0][5].startswith("8x ") and rows[0][6] == "ready" and not handlers.compressing(tome_tiny)
    assert "already in the library" in handlers.upload(tome_tiny, [str(good)])


def test_compressed_mode_on_a_book_still_compressing_answers_uncompressed_and_says_so(tome_tiny, tmp_path):
    pdf = make_pdf(tmp_path / "q.pdf", ["Tides " * 200, "Gulls " * 200])
    handlers.upload(tome_tiny, [str(pdf)])
    doc = tome_tiny.documents()[0]
    n = len(tome_tiny.store.segments(doc.id))
    compressed = handlers.ChatSettings(mode="compressed", max_new_tokens=3)
    history, conv, notice = list(handlers.chat(tome_tiny, "What happens?", [], [doc.id], None,
                                               settings=compressed))[-1]
    assert notice == f"memories of q are 0/{n} segments done (ETA unknown); answering uncompressed."
    assert "uncompressed · " in history[-1]["content"]  # the figures line of the answer given
    left, right, conv, notice = list(handlers.compare(tome_tiny, "What happens?", [], [], [doc.id], None,
                                                      settings=compressed))[-1]
    assert "answering uncompressed only" in left[-1]["content"] and "uncompressed · " in right[-1]["content"]
    assert [m.mode for m in tome_tiny.store.messages(conv) if m.role == "assistant"] == ["uncompressed"]
    tome_tiny.compress_queued()
    history, _, notice = list(handlers.chat(tome_tiny, "What happens?", [], [doc.id], None,
                                            settings=compressed))[-1]
    assert notice == "" and "compressed kvzip 8x" in history[-1]["content"]


def test_cancel_handler(tome_tiny, tmp_path):
    handlers.upload(tome_tiny, [str(make_pdf(tmp_path / "k.pdf", ["Keep me askable."]))])
    doc = tome_tiny.documents()[0]
    assert handlers.cancel(tome_tiny, doc.id).startswith("Compression of **k** cancelled")
    assert handlers.library_rows(tome_tiny)[0][4:7] == ["yes", "–", "ready"]
    assert "no compression to cancel" in handlers.cancel(tome_tiny, doc.id)


def test_chat_streams_escapes_html_and_ends_with_cited_sources(tome_tiny, tmp_path):
    r = tome_tiny.ingest(make_pdf(tmp_path / "g.pdf", ["Gulls nest on page one."]))
    steps = list(handlers.chat(tome_tiny, "Where do <b>gulls</b> nest?", [], [r.document.id], None,
                               settings=UNCOMPRESSED))
    history, conv, notice = steps[-1]
    assert len(steps) > 2  # streamed: several updates before the sources note
    assert history[0] == {"role": "user", "content": "Where do &lt;b&gt;gulls&lt;/b&gt; nest?"}
    assert history[1]["role"] == "assistant" and history[1]["content"]
    assert history[2]["metadata"]["title"] == "Sources: g, p. 1"
    assert "<mark>Gulls</mark> <mark>nest</mark> on page one" in history[2]["content"]  # question words marked
    assert "first token" in history[2]["content"]
    assert conv is not None and notice == ""
    # A follow-up in the same conversation sends the earlier turn (not the sources note) back.
    steps = list(handlers.chat(tome_tiny, "And then?", history, [r.document.id], conv, settings=UNCOMPRESSED))
    assert steps[-1][1] == conv
    assert [m.role for m in tome_tiny.store.messages(conv)] == ["user", "assistant"] * 2
    # The random tiny model is never sure of its gibberish: with a confidence floor, a note says so before
    # the sources, also when the conversation is opened again (the default floor, 0, marks nothing).
    tome_tiny.config.confidence_floor = 0.5
    history, conv, _ = list(handlers.chat(tome_tiny, "Where?", [], [r.document.id], None,
                                          settings=UNCOMPRESSED))[-1]
    stats = tome_tiny.store.messages(conv)[-1].stats
    assert stats["confidence"] < 0.01 and stats["low_confidence"] and not stats["restates_question"]
    assert [m.get("metadata", {}).get("title", "")[:10] for m in history] == ["", "", "⚠ No clear", "Sources: g"]
    assert f"confidence {stats['confidence']:.2f}" in history[2]["content"]
    assert handlers.open_conversation(tome_tiny, conv)[0][2]["metadata"]["title"] == "⚠ No clear answer"


def test_compare_gives_two_answers_with_their_figures(tome_tiny, tmp_path):
    r = tome_tiny.ingest(make_pdf(tmp_path / "c.pdf", ["Tides " * 200, "Gulls " * 200]))
    settings = handlers.ChatSettings(mode="compare", max_new_tokens=5)
    left, right, conv, notice = list(handlers.compare(tome_tiny, "What happens?", [], [], [r.document.id], None,
                                                      settings=settings))[-1]
    assert "compressed kvzip 8x" in left[-1]["content"] and "memory slots" in left[-1]["content"]
    assert "uncompressed" in right[-1]["content"] and "document tokens" in right[-1]["content"]
    assert "untrained adapter" not in left[-1]["content"]  # said only of an untrained UIO adapter's memories
    modes = [m.mode for m in tome_tiny.store.messages(conv) if m.role == "assistant"]
    assert modes == ["compressed", "uncompressed"]
    again_left, again_right, books = handlers.open_conversation(tome_tiny, conv)
    assert books == [r.document.id]
    assert [m["role"] for m in again_left][:2] == ["user", "assistant"] and again_right[0]["role"] == "user"
    assert handlers.conversation_choices(tome_tiny)[0][1] == conv
    uio = handlers.ChatSettings(mode="compressed", max_new_tokens=2, compressor="uio")
    history, _, _ = list(handlers.chat(tome_tiny, "What happens?", [], [r.document.id], None, settings=uio))[-1]
    assert "compressed uio 8x" in history[-1]["content"] and "untrained adapter" in history[-1]["content"]


def test_cache_policy_setting_reaches_the_answer_and_its_figures(tome_tiny, tmp_path):
    r = tome_tiny.ingest(make_pdf(tmp_path / "h.pdf", ["Herons wade in the shallows. " * 30]))
    settings = handlers.ChatSettings(mode="uncompressed", max_new_tokens=4, cache_policy="h2o", cache_eviction=0.5)
    history, conv, notice = list(handlers.chat(tome_tiny, "What wades?", [], [r.document.id], None,
                                               settings=settings))[-1]
    assert notice == "" and "cache h2o " in history[-1]["content"] and "% evicted" in history[-1]["content"]
    assert tome_tiny.store.messages(conv)[-1].stats["cache_policy"] == "h2o"
    bad = handlers.ChatSettings(mode="uncompressed", max_new_tokens=4, cache_policy="gate")
    notice = list(handlers.chat(tome_tiny, "What wades?", [], [r.document.id], None, settings=bad))[-1][2]
    assert notice.startswith("Error: ") and "Attention-Gate" in notice


def test_chat_asks_for_a_book_and_a_question(tome_tiny):
    assert list(handlers.chat(tome_tiny, "Hi?", [], [], None))[-1][2].startswith("Select at least one")
    assert list(handlers.chat(tome_tiny, "  ", [], [1], None))[-1][2] == "Type a question."


def test_errors_during_an_answer_are_shown_not_raised(tome_tiny, tmp_path):
    r = tome_tiny.ingest(make_pdf(tmp_path / "w.pdf", ["Some text."]))
    huge = handlers.ChatSettings(mode="uncompressed", max_new_tokens=10_000)  # beyond the tiny window
    notice = list(handlers.chat(tome_tiny, "Hi?", [], [r.document.id], None, settings=huge))[-1][2]
    assert notice.startswith("Error: ") and "window" in notice


def test_delete_and_reingest_handlers(tome_tiny, tmp_path):
    r = tome_tiny.ingest(make_pdf(tmp_path / "d.pdf", ["Delete me."]))
    assert handlers.reingest(tome_tiny, r.document.id).startswith("**d** read again")
    doc = tome_tiny.documents()[0]
    assert handlers.delete(tome_tiny, doc.id) == "Deleted **d**."
    assert handlers.library_rows(tome_tiny) == []
    assert "no document" in handlers.delete(tome_tiny, doc.id)


def test_chat_says_which_page_it_reads_again(tome_tiny, tmp_path):
    """A reader that says nothing (the tiny model with its head zeroed) restates the question: the page
    says which page is re-read while it happens, and the note under the answer names it afterwards."""
    import torch

    pages = ["The committee met on Tuesday. " * 30, "The keeper owns a tame falcon named Ossian. " * 3,
             "The committee met on Tuesday. " * 30]
    r = tome_tiny.ingest(make_pdf(tmp_path / "f.pdf", pages, title="Falcons"))
    with torch.no_grad():
        tome_tiny.lm.model.get_output_embeddings().weight.zero_()
    tome_tiny.config.context_budget = 10_000  # the whole book is read first: the page alone is narrower
    steps = list(handlers.chat(tome_tiny, "What is the falcon called?", [], [r.document.id], None,
                               settings=UNCOMPRESSED))
    assert any("re-reading Falcons, p. 2 alone" in notice for _, _, notice in steps)
    history = steps[-1][0]
    assert [m.get("metadata", {}).get("title", "")[:10] for m in history] == ["", "", "⚠ No clear", "Sources: F"]
    assert "also after re-reading Falcons, p. 2" in history[2]["content"]
    assert history[3]["metadata"]["title"].startswith("Sources: Falcons, p. 2")
