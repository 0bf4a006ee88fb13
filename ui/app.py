"""The Gradio page: a Library tab and a Chat tab, wired to ``ui.handlers``."""
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

    def refresh():
        return (gr.update(value=handlers.library_rows(tome)),
                gr.update(choices=handlers.document_choices(tome)),
                gr.update(choices=handlers.document_choices(tome)))

    def on_upload(files, progress=gr.Progress()):
        report = handlers.upload(tome, files, lambda frac, msg: progress(frac, desc=msg))
        return (report, *refresh())

    def on_delete(doc_id):
        return (handlers.delete(tome, doc_id), *refresh())

    def on_chat(message, history, doc_ids, conv_id, request: gr.Request):
        key = request.session_hash if request else "local"
        stop = stops[key] = threading.Event()
        try:
            for hist, conv, notice in handlers.chat(tome, message, history, doc_ids, conv_id, stop=stop):
                yield hist, conv, notice, ""
        finally:
            stops.pop(key, None)

    def on_stop(request: gr.Request):
        event = stops.get(request.session_hash if request else "local")
        if event:
            event.set()

    with gr.Blocks(title="Tome") as app:
        gr.Markdown(f"# Tome\nAsk questions about whole books. Model: **{tome.model_name}**")
        with gr.Tab("Library"):
            files = gr.File(label="Upload PDF, TXT or MD files", file_count="multiple",
                            file_types=[".pdf", ".txt", ".md"], elem_id="upload")
            upload_btn = gr.Button("Add to library", variant="primary", elem_id="add-btn")
            report = gr.Markdown(elem_id="upload-report")
            table = gr.Dataframe(headers=handlers.LIBRARY_HEADERS, value=handlers.library_rows(tome),
                                 interactive=False, elem_id="library")
            with gr.Row():
                del_choice = gr.Dropdown(label="Book to delete", choices=handlers.document_choices(tome))
                del_btn = gr.Button("Delete", variant="stop")
        with gr.Tab("Chat"):
            docs = gr.Dropdown(label="Books to ask about", multiselect=True, elem_id="books",
                               choices=handlers.document_choices(tome))
            chatbot = gr.Chatbot(label="Tome", elem_id="chat", height=480)
            notice = gr.Markdown(elem_id="notice")
            with gr.Row():
                question = gr.Textbox(placeholder="Ask about the selected books…", show_label=False,
                                      scale=5, elem_id="question")
                ask_btn = gr.Button("Ask", variant="primary", scale=1, elem_id="ask-btn")
                stop_btn = gr.Button("Stop", scale=1, elem_id="stop-btn")
                new_btn = gr.Button("New chat", scale=1)
            conv = gr.State(None)

        upload_btn.click(on_upload, [files], [report, table, docs, del_choice],
                         concurrency_id=MODEL_QUEUE, concurrency_limit=1)
        del_btn.click(on_delete, [del_choice], [report, table, docs, del_choice])
        chat_inputs = [question, chatbot, docs, conv]
        chat_outputs = [chatbot, conv, notice, question]
        for trigger in (ask_btn.click, question.submit):
            trigger(on_chat, chat_inputs, chat_outputs, concurrency_id=MODEL_QUEUE, concurrency_limit=1)
        stop_btn.click(on_stop, None, None, queue=False)
        new_btn.click(lambda: ([], None, ""), None, [chatbot, conv, notice])
        app.load(refresh, None, [table, docs, del_choice])
    return app
