"""The Gradio page: a Library tab and a Chat tab (with compare mode and settings), wired to ``ui.handlers``."""
from __future__ import annotations

import threading
import gradio as gr

from tome import Tome
from ui import handlers

# Every model-using event shares one queue slot: a single model serves all sessions.
MODEL_QUEUE = "model"


def build_app(tome: Tome) -> gr.Blocks:
    """The whole UI; tests build it without launching."""
    stops: dict[str, threading.Event] = {}  # per browser session: the stop button's signal
    defaults = handlers.default_settings(tome)

    def session(request: gr.Request | None) -> str:
        return request.session_hash if request else "local"

    def refresh():
        books = handlers.document_choices(tome)
        return (gr.update(value=handlers.library_rows(tome)), gr.update(choices=books), gr.update(choices=books),
                gr.update(choices=handlers.conversation_choices(tome)))

    def on_upload(files, password, progress=gr.Progress()):
        report = handlers.upload(tome, files, lambda frac, msg: progress(frac, desc=msg), password)
        return (report, *refresh(), gr.update(active=True))  # the table follows stage 2 from here

    def on_tick():
        # Stage 2 runs in the service's worker; the table shows it and stops polling once the queue is empty.
        return gr.update(value=handlers.library_rows(tome)), gr.update(active=handlers.compressing(tome))

    def on_cancel(doc_id):
        return (handlers.cancel(tome, doc_id), *refresh())

    def on_delete_ask(doc_id):
        if doc_id is None:
            return "Pick a book first.", gr.update(visible=False)
        return f"Delete book #{int(doc_id)} and its memories? Press **Confirm delete**.", gr.update(visible=True)

    def on_delete(doc_id):
        return (handlers.delete(tome, doc_id), gr.update(visible=False), *refresh())

    def on_reingest(doc_id, progress=gr.Progress()):
        return (handlers.reingest(tome, doc_id, lambda f, m: progress(f, desc=m)), *refresh(), gr.update(active=True))

    def settings_of(mode, ratio, max_new, temperature, policy, eviction, compressor) -> handlers.ChatSettings:
        return handlers.ChatSettings(mode=mode, ratio=int(str(ratio).rstrip("x")), max_new_tokens=int(max_new),
                                     temperature=float(temperature), cache_policy=policy,
                                     cache_eviction=float(eviction) / 100, compressor=compressor)

    def on_ask(message, left, right, doc_ids, conv_id, mode, ratio, max_new, temperature, policy, eviction,
               compressor, request: gr.Request):
        key = session(request)
        stop = stops[key] = threading.Event()
        settings = settings_of(mode, ratio, max_new, temperature, policy, eviction, compressor)
        try:
            if mode == "compare":
                for l, r, conv, notice in handlers.compare(tome, message, left, right, doc_ids, conv_id, stop,
                                                           settings):
                    yield l, r, conv, notice, ""
            else:
                for hist, conv, notice in handlers.chat(tome, message, left, doc_ids, conv_id, stop, settings):
                    yield hist, right, conv, notice, ""
        finally:
            stops.pop(key, None)

    def on_stop(request: gr.Request):
        event = stops.get(session(request))
        if event:
            event.set()

    def on_mode(mode):
        compare = mode == "compare"
        return (gr.update(label="Compressed (memories)" if compare else "Tome"), gr.update(visible=compare))

    def on_model(name):
        tome.use_model(name)
        return f"Model: **{name}** (loads with the next question; memories for it are made on demand)"

    def on_open(conv_id):
        left, right, docs = handlers.open_conversation(tome, conv_id)
        return left, right, conv_id, gr.update(value=docs), ""

    with gr.Blocks(title="Tome") as app:
        gr.Markdown("# Tome\nAsk questions about whole books.")
        with gr.Tab("Chat"):
            with gr.Row():
                docs = gr.Dropdown(label="Books to ask about", multiselect=True, elem_id="books", scale=3,
                                   choices=handlers.document_choices(tome))
                mode = gr.Radio(list(handlers.CHAT_MODES), value=defaults.mode, label="Mode", elem_id="mode",
                                scale=2)
            with gr.Row():
                left = gr.Chatbot(label="Tome", elem_id="chat", height=460, sanitize_html=True)
                right = gr.Chatbot(label="Uncompressed (raw text)", elem_id="chat-raw", height=460,
                                   visible=False, sanitize_html=True)
            notice = gr.Markdown(elem_id="notice")
            with gr.Row():
                question = gr.Textbox(placeholder="Ask about the selected books…", show_label=False, scale=5,
                                      elem_id="question")
                ask_btn = gr.Button("Ask", variant="primary", scale=1, elem_id="ask-btn")
                stop_btn = gr.Button("Stop", scale=1, elem_id="stop-btn")
                new_btn = gr.Button("New chat", scale=1, elem_id="new-btn")
            with gr.Row():
                past = gr.Dropdown(label="Past conversations", choices=handlers.conversation_choices(tome),
                                   scale=4, elem_id="past")
                open_btn = gr.Button("Open", scale=1)
            with gr.Accordion("Settings", open=False, elem_id="settings"):
                with gr.Row():
                    model = gr.Dropdown(handlers.MODEL_CHOICES, value=tome.config.model, label="Base model",
                                        info="for everyone using this Tome")
                    ratio = gr.Radio([f"{r}x" for r in tome.ratio_choices()], value=f"{defaults.ratio}x",
                                     label="Compression ratio")
                    compressor = gr.Dropdown(tome.compressor_choices(), value=defaults.compressor,
                                             label="Compressor", elem_id="compressor",
                                             info="how memories are made; missing ones are made on demand")
                    max_new = gr.Slider(16, 1024, value=defaults.max_new_tokens, step=16, label="Max new tokens")
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                with gr.Row():
                    policy = gr.Dropdown(tome.policy_choices(), value=defaults.cache_policy, label="Cache policy",
                                         info="prunes the recent cache (question, answer); memories stay whole",
                                         elem_id="cache-policy")
                    eviction = gr.Slider(0, 90, value=round(defaults.cache_eviction * 100), step=5,
                                         label="Eviction target (%)", elem_id="cache-eviction")
                model_note = gr.Markdown()
            conv = gr.State(None)
        with gr.Tab("Library"):
            files = gr.File(label="Upload PDF, TXT or MD files", file_count="multiple",
                            file_types=[".pdf", ".txt", ".md"], elem_id="upload")
            with gr.Row():
                password = gr.Textbox(label="PDF password (only for encrypted files)", type="password", scale=3)
                upload_btn = gr.Button("Add to library", variant="primary", scale=1, elem_id="add-btn")
            report = gr.Markdown(elem_id="upload-report")
            table = gr.Dataframe(headers=handlers.LIBRARY_HEADERS, value=handlers.library_rows(tome),
                                 interactive=False, elem_id="library")
            ticker = gr.Timer(2.0, active=handlers.compressing(tome))
            with gr.Row():
                chosen = gr.Dropdown(label="Book", choices=handlers.document_choices(tome), elem_id="book-pick")
                reingest_btn = gr.Button("Re-ingest")
                cancel_btn = gr.Button("Cancel compression", elem_id="cancel-compression")
                delete_btn = gr.Button("Delete", variant="stop")
                confirm_btn = gr.Button("Confirm delete", variant="stop", visible=False, elem_id="confirm-delete")

        lists = [table, docs, chosen, past]
        upload_btn.click(on_upload, [files, password], [report, *lists, ticker], concurrency_id=MODEL_QUEUE,
                         concurrency_limit=1)
        ticker.tick(on_tick, None, [table, ticker], show_progress="hidden", concurrency_id="library-tick",
                    concurrency_limit=None)
        cancel_btn.click(on_cancel, [chosen], [report, *lists])
        delete_btn.click(on_delete_ask, [chosen], [report, confirm_btn])
        confirm_btn.click(on_delete, [chosen], [report, confirm_btn, *lists])
        reingest_btn.click(on_reingest, [chosen], [report, *lists, ticker], concurrency_id=MODEL_QUEUE,
                           concurrency_limit=1)
        ask_inputs = [question, left, right, docs, conv, mode, ratio, max_new, temperature, policy, eviction,
                      compressor]
        ask_outputs = [left, right, conv, notice, question]
        for trigger in (ask_btn.click, question.submit):
            trigger(on_ask, ask_inputs, ask_outputs, concurrency_id=MODEL_QUEUE, concurrency_limit=1
                    ).then(lambda: gr.update(choices=handlers.conversation_choices(tome)), None, [past])
        stop_btn.click(on_stop, None, None, queue=False)
        new_btn.click(lambda: ([], [], None, ""), None, [left, right, conv, notice])
        mode.change(on_mode, [mode], [left, right])
        model.change(on_model, [model], [model_note], concurrency_id=MODEL_QUEUE, concurrency_limit=1)
        open_btn.click(on_open, [past], [left, right, conv, docs, notice])
        # a reloaded page follows the queue again (the worker never stopped: it belongs to the service)
        app.load(lambda: (*refresh(), gr.update(active=handlers.compressing(tome))), None, [*lists, ticker])
    return app
