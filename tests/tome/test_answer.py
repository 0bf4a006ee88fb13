"""The answer path: where the time to the first token went, the memory budget."""
import pytest

from storage.files import forget_verified
from tests.conftest import make_pdf
from tome import Config


PAGES = [f"Page {i}. " + "The keeper lit the lantern at the north wall before the storm. " * 12 for i in range(1, 5)]


def test_ask_reports_where_the_time_to_first_token_went(tome_tiny, tmp_path):
    doc = tome_tiny.ingest(make_pdf(tmp_path / "b.pdf", PAGES)).document
    tome_tiny.memories.cache.clear()
    forget_verified()
    final = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1]
    t = final.stats["timing"]
    phases = ("lookup", "read", "select", "assembly", "prefill", "first_decode")
    assert set(phases) <= set(t) and all(t[p] >= 0 for p in phases)
    assert t["read"] > 0 and t["prefill"] > 0 and t["assembly"] > 0
    assert sum(t[p] for p in phases) <= t["ttft_s"]
    again = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1].stats["timing"]
    assert "read" not in again  # the memories came from the LRU
    plain = list(tome_tiny.ask([doc.id], "Who lit the lantern?"))[-1].stats["timing"]
    assert "assembly" not in plain and plain["prefill"] > 0
    assert sum(v for k, v in plain.items() if k != "ttft_s") <= plain["ttft_s"]


def test_memory_budget_caps_the_slots_a_compressed_answer_attends_to(tome_tiny, tmp_path):
    from dataclasses import replace

    doc = tome_tiny.ingest(make_pdf(tmp_path / "b.pdf", PAGES)).document
    full = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1]
    tome_tiny.config = replace(tome_tiny.config, memory_budget=16)
    capped = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed"))[-1]
    assert full.stats["memory_slots"] > 16 >= capped.stats["memory_slots"] > 0
    assert capped.truncated and len(capped.sources) < len(full.sources)


def test_default_memory_budget_is_sized_to_the_model_on_cpu(tome_tiny, smollm2, qwen):
    from dataclasses import replace

    from uio.model import _flat_ttft_slots, flat_ttft_slots

    assert Config().memory_budget == -1  # auto
    # The rule: parameters outside the embedding tables / (8 * head_dim * heads * layers), floored.
    c = smollm2.model.config
    params = sum(p.numel() for n, p in smollm2.model.named_parameters()
                 if "embed_tokens" not in n and "lora_" not in n)  # other tests may have injected an adapter
    assert flat_ttft_slots(smollm2, floor=1) == params // (8 * 64 * c.num_attention_heads * c.num_hidden_layers)
    assert (flat_ttft_slots(smollm2), flat_ttft_slots(qwen)) == (768, 2080)  # Qwen's untied lm_head not counted
    assert tome_tiny.memory_budget() == 512  # the floor: a tiny model would otherwise get almost nothing
    before = flat_ttft_slots(tome_tiny.lm, floor=1)
    tome_tiny.adapter_for()  # injects LoRA weights into the model: not part of an answer's cost
    assert any("lora_" in n for n, _ in tome_tiny.lm.model.named_parameters())
    assert _flat_ttft_slots(tome_tiny.lm.model, 1) == before  # counted afresh (flat_ttft_slots keeps its first)
    assert flat_ttft_slots(tome_tiny.lm, floor=1) == before
    for fixed in (0, 16):
        tome_tiny.config = replace(tome_tiny.config, memory_budget=fixed)
        assert tome_tiny.memory_budget() == fixed
    excerpt = Config().memory_excerpt_budget
    assert 0 < excerpt < 2080
    assert tome_tiny.memory_budget(excerpts=True) == 16  # the lower of both caps
    tome_tiny.config = replace(tome_tiny.config, memory_budget=0)  # no cap: the excerpts' alone
    assert tome_tiny.memory_budget(excerpts=True) == excerpt
    tome_tiny.config = replace(tome_tiny.config, memory_excerpt_budget=0)
    assert tome_tiny.memory_budget(excerpts=True) == 0


def test_excerpts_cap_the_memory_slots_beside_them(tome_tiny, tmp_path):
    """With a passage as text, compressed mode reads at most memory_excerpt_budget slots, the segments closest
    to the question first; without excerpts the cap does not apply (docs/COMPRESSION.md, "Eleventh run")."""
    from dataclasses import replace

    doc = tome_tiny.ingest(make_pdf(tmp_path / "keeper.pdf", PAGES)).document
    q = "Where did the keeper light the lantern?"

    def slots(**cfg) -> int:
        tome_tiny.config = replace(tome_tiny.config, **cfg)
        return list(tome_tiny.ask([doc.id], q, mode="compressed", max_new_tokens=2))[-1].stats["memory_slots"]

    every = slots(memory_excerpts=0, memory_excerpt_budget=24)
    assert every > 48  # the whole memory: the cap is for excerpts only
    capped = slots(memory_excerpts=1, memory_excerpt_budget=24)
    assert 0 < capped <= 24
    assert slots(memory_excerpts=1, memory_excerpt_budget=0) == every


FILLER = "The committee met on Tuesday and discussed the budget, the roads and the new library. "


def test_skip_excerpted_gives_the_memory_slots_to_other_segments(tome_tiny, tmp_path):
    """memory_skip_excerpted: the segment the passage comes from is read as text, so its memory is not chosen
    again; without the option the best segment's memory sits beside its own passage."""
    from dataclasses import replace

    pages = [FILLER * 8, "The keeper lit the lantern at the north wall before the storm. " * 3 + FILLER * 5,
             FILLER * 8, FILLER * 8]
    doc = tome_tiny.ingest(make_pdf(tmp_path / "keeper.pdf", pages)).document
    assert len(tome_tiny.store.segments(doc.id)) >= 3
    q = "Where did the keeper light the lantern?"

    def ask(skip: bool) -> tuple[int, set[int]]:
        tome_tiny.config = replace(tome_tiny.config, memory_excerpts=1, memory_excerpt_budget=40, neighbours=0,
                                   memory_skip_excerpted=skip)
        final = list(tome_tiny.ask([doc.id], q, mode="compressed", max_new_tokens=2))[-1]
        (excerpt,) = final.stats["excerpts"]
        return excerpt["segment"], {s.segment for s in final.sources}

    seg, chosen = ask(skip=False)
    assert seg in chosen
    seg_skip, chosen_skip = ask(skip=True)
    assert seg_skip == seg and chosen_skip and seg not in chosen_skip


def _books(tmp_path):
    pages = {
        "Alder": [FILLER * 6, "The Alder orchard grows forty apple trees along the river. " + FILLER * 4],
        "Birch": [FILLER * 6, "The Birch lighthouse keeper owns a tame falcon named Ossian. " + FILLER * 4,
                  FILLER * 6],
        "Cedar": [FILLER * 6, "Cedar station sells tickets for the night train to the coast. " + FILLER * 4],
    }
    return {t: make_pdf(tmp_path / f"{t}.pdf", p, title=t) for t, p in pages.items()}


def _bare_prompt(tome, mode):
    from retrieval.prompt import Selection, build_messages, count_tokens

    titles = [d.title for d in tome.documents()]
    return count_tokens(tome.lm.tokenizer, build_messages(Selection([], []), "What is the name of the "
                                                         "lighthouse keeper's falcon?", memory_of=titles))


@pytest.mark.parametrize("mode", ["uncompressed", "compressed"])
def test_question_about_book_b_cites_b_page_across_three_books(tome_tiny, tmp_path, mode):
    ids = {t: tome_tiny.ingest(p).document.id for t, p in _books(tmp_path).items()}
    assert all(tome_tiny.document(i).passage_embedder == "all-MiniLM-L6-v2" for i in ids.values())
    tome_tiny.config.context_budget = 300  # uncompressed: three books do not fit, the selector chooses
    if mode == "compressed":  # compressed: shrink the window so the memories do not all fit either
        tome_tiny.config.memory_excerpts = 0  # the memories' selection alone (a passage per book would fill it)
        lm = tome_tiny.lm
        lm.model.config.max_position_embeddings = 60 + 16 + 3 + _bare_prompt(tome_tiny, mode)
    final = list(tome_tiny.ask(list(ids.values()), "What is the name of the lighthouse keeper's falcon?",
                               max_new_tokens=3, mode=mode))[-1]
    top = final.sources[0]
    assert top.document_id == ids["Birch"] and top.page_start <= 2 <= top.page_end and "Ossian" in top.snippet
    assert final.truncated  # the selector cut something
    assert [s.score for s in final.sources] == sorted((s.score for s in final.sources), reverse=True)
    stored = tome_tiny.store.messages(final.conversation_id)[1].stats["sources"]
    assert stored[0]["title"] == "Birch" and stored[0]["page_start"] <= 2 <= stored[0]["page_end"]
    if mode == "compressed":
        assert final.stats["memory_slots"] == final.context_tokens <= 60


@pytest.mark.parametrize("mode", ["uncompressed", "compressed"])
def test_both_modes_choose_segments_through_the_selector(tome_tiny, tmp_path, monkeypatch, mode):
    import tome.answer

    calls = []
    real = tome.answer.select_segments

    def spy(books, scores, budget, neighbours=1, **kw):
        calls.append((len(books), budget))
        return real(books, scores, budget, neighbours, **kw)

    monkeypatch.setattr(tome.answer, "select_segments", spy)  # the answer path's one call of the selector
    r = tome_tiny.ingest(make_pdf(tmp_path / "x.pdf", ["Some text about tides.", "More about gulls."]))
    list(tome_tiny.ask([r.document.id], "gulls?", max_new_tokens=2, mode=mode))
    assert len(calls) == 1 and calls[0][0] == 1 and calls[0][1] > 0


def test_citations_name_the_matching_passage_page(tome_tiny, tmp_path):
    pages = ["The harbour master keeps the ledgers in the stone tower by the quay.",
             "The lighthouse keeper owns a tame falcon named Ossian.",
             "Ships pay their dues each spring at the custom house."]
    r = tome_tiny.ingest(make_pdf(tmp_path / "h.pdf", pages, title="Harbour"))
    segs = tome_tiny.store.segments(r.document.id)
    assert segs[0].page_start == 1 and segs[0].page_end >= 2  # one segment holds several pages
    final = list(tome_tiny.ask([r.document.id], "What is the falcon called?", max_new_tokens=2))[-1]
    top = final.sources[0]
    assert (top.page_start, top.page_end) == (2, 2) and top.label() == "Harbour, p. 2"
    assert "Ossian" in top.snippet and "falcon" in top.terms
    stored = tome_tiny.store.messages(final.conversation_id)[1].stats["sources"][0]
    assert stored["page_start"] == stored["page_end"] == 2 and "falcon" in stored["terms"]


@pytest.mark.parametrize("layout,positions", [("inline", "consecutive"), ("inline", "spaced"),
                                              ("before", "spaced"), ("head", "consecutive")])
def test_memory_layouts_read_the_same_memories(tome_tiny, tmp_path, layout, positions):
    """Inline memories sit in the system message after the book's title, "head" memories after its
    instructions: the cache then also holds the chat template's head (prefix > memory slots) and the prompt is
    only what follows; the slots read are the same."""
    from dataclasses import replace

    doc = tome_tiny.ingest(make_pdf(tmp_path / "b.pdf", PAGES)).document
    assert tome_tiny.config.memory_layout == "auto"  # the default, by model (the test's is configured as Qwen)
    tome_tiny.config = replace(tome_tiny.config, memory_layout="before")
    base = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed", max_new_tokens=4))[-1]
    tome_tiny.config = replace(tome_tiny.config, memory_layout=layout, memory_positions=positions)
    got = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed", max_new_tokens=4))[-1]
    assert (base.stats["memory_layout"], base.stats["memory_positions"]) == ("before", "consecutive")
    assert (got.stats["memory_layout"], got.stats["memory_positions"]) == (layout, positions)
    assert got.stats["memory_slots"] == base.stats["memory_slots"] > 0
    assert base.stats["prefix_len"] == base.stats["memory_slots"]
    if layout in ("inline", "head"):
        assert got.stats["prefix_len"] > got.stats["memory_slots"]
        assert got.stats["prompt_tokens"] < base.stats["prompt_tokens"]
    if layout == "head":  # the instructions before the memories: read on the first question only
        hits = tome_tiny.lm.head_kv.hits
        again = list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed", max_new_tokens=4))[-1]
        assert tome_tiny.lm.head_kv.hits == hits + 1
        assert (again.text, again.stats["prefix_len"]) == (got.text, got.stats["prefix_len"])
    tome_tiny.config = replace(tome_tiny.config, memory_layout="sideways")
    with pytest.raises(ValueError, match="memory_layout"):
        list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed", max_new_tokens=4))
    tome_tiny.config = replace(tome_tiny.config, memory_layout="head", memory_excerpt_scale=0.0)
    with pytest.raises(ValueError, match="memory_excerpt_scale"):
        list(tome_tiny.ask([doc.id], "Who lit the lantern?", mode="compressed", max_new_tokens=4))


def test_a_question_over_two_books_gets_the_budget_per_book(tome_tiny, tmp_path):
    from dataclasses import replace

    books = _books(tmp_path)
    ids = [tome_tiny.ingest(books[t]).document.id for t in ("Alder", "Birch")]
    base = replace(tome_tiny.config, context_budget=200)

    def context(**kw) -> int:
        tome_tiny.config = replace(base, **kw)
        final = list(tome_tiny.ask(ids, "Who owns a falcon, and what grows by the river?", max_new_tokens=2))[-1]
        assert final.truncated  # neither budget holds both books
        return final.context_tokens

    one, two = context(context_books=1), context()  # default: two books' worth
    assert one <= 200 < two <= 400
    only = list(tome_tiny.ask(ids[:1], "What grows by the river?", max_new_tokens=2))[-1]
    assert only.context_tokens <= 200  # one book: the budget as configured


@pytest.mark.parametrize("layout", ["before", "inline"])
def test_memory_excerpts_put_the_best_passages_as_text_beside_the_memories(tome_tiny, tmp_path, layout):
    """``memory_excerpts``: the retriever's best passage goes into the compressed prompt word for word (its
    tokens are read at question time), labelled with its page; the memories read stay the same."""
    from dataclasses import replace

    from retrieval.prompt import Excerpt, build_messages, count_tokens, fit_budget

    pages = ["The harbour master keeps the ledgers in the stone tower by the quay.",
             "The lighthouse keeper owns a tame falcon named Ossian.",
             "Ships pay their dues each spring at the custom house."]
    doc = tome_tiny.ingest(make_pdf(tmp_path / "h.pdf", pages, title="Harbour")).document
    q = "What is the falcon called?"
    assert tome_tiny.config.memory_excerpts == 1  # the default
    tome_tiny.config = replace(tome_tiny.config, memory_layout=layout, memory_excerpts=0)
    base = list(tome_tiny.ask([doc.id], q, mode="compressed", max_new_tokens=2))[-1]
    tome_tiny.config = replace(tome_tiny.config, memory_excerpts=1)
    got = list(tome_tiny.ask([doc.id], q, mode="compressed", max_new_tokens=2))[-1]
    assert base.stats["excerpts"] == []
    assert got.stats["excerpts"] == [{"document_id": doc.id, "page": 2, "segment": 0}]
    assert got.stats["memory_slots"] == base.stats["memory_slots"] > 0
    tok = tome_tiny.lm.tokenizer
    passage = next(p for p in tome_tiny.store.passages(doc.id) if p.page == 2).text
    assert "Ossian" in passage
    bare = build_messages(fit_budget([], 0), q, memory_of=["Harbour"])
    more = build_messages(fit_budget([], 0), q, memory_of=["Harbour"], excerpts=[Excerpt("Harbour", 2, passage)],
                          # the short instructions by default; inline memories keep the long prompt
                          memory_prompt=tome_tiny.config.memory_prompt if layout == "before" else "long")
    assert "[Harbour, p. 2]\n" + passage in more[0]["content"]
    added = count_tokens(tok, more) - count_tokens(tok, bare)
    assert got.stats["prompt_tokens"] - base.stats["prompt_tokens"] == added  # read at question time
    from ui.handlers import figures_line

    assert "+ 1 passage as text" in figures_line(got) and "passage" not in figures_line(base)


def test_excerpts_in_the_question_message(tome_tiny, tmp_path):
    """memory_excerpt_place="user": the same passage, labelled, in the question's message before the question
    instead of in the system message; the question's own words stay last; a bad value is refused."""
    from dataclasses import replace

    from retrieval.prompt import Excerpt, build_messages, count_tokens, fit_budget

    q = "What is the falcon called?"
    ex = [Excerpt("Harbour", 2, "The lighthouse keeper owns a tame falcon named Ossian.")]
    sys_msgs = build_messages(fit_budget([], 0), q, memory_of=["Harbour"], excerpts=ex)
    user_msgs = build_messages(fit_budget([], 0), q, memory_of=["Harbour"], excerpts=ex, excerpts_in="user")
    label = "[Harbour, p. 2]\nThe lighthouse keeper owns a tame falcon named Ossian."
    assert label in sys_msgs[0]["content"] and sys_msgs[-1]["content"] == q
    assert label not in user_msgs[0]["content"] and label in user_msgs[-1]["content"]
    assert user_msgs[-1]["content"].endswith("Question: " + q)
    bare = build_messages(fit_budget([], 0), q, memory_of=["Harbour"], excerpts_in="user")
    assert bare[-1]["content"] == q  # no excerpts: the question alone
    with pytest.raises(ValueError, match="excerpts_in"):
        build_messages(fit_budget([], 0), q, memory_of=["Harbour"], excerpts=ex, excerpts_in="middle")

    doc = tome_tiny.ingest(make_pdf(tmp_path / "h.pdf", ["The harbour master keeps the ledgers.",
                                                         "The lighthouse keeper owns a tame falcon named Ossian."],
                                    title="Harbour")).document
    # layout "before": the whole chat is the prompt (with "head" its opening is in the cache, not counted)
    tome_tiny.config = replace(tome_tiny.config, memory_excerpt_place="user", memory_layout="before")
    got = list(tome_tiny.ask([doc.id], q, mode="compressed", max_new_tokens=2))[-1]
    assert got.stats["excerpts"] and got.stats["prompt_tokens"] > count_tokens(tome_tiny.lm.tokenizer, bare)
    tome_tiny.config = replace(tome_tiny.config, memory_excerpt_place="middle")
    with pytest.raises(ValueError, match="memory_excerpt_place"):
        list(tome_tiny.ask([doc.id], q, mode="compressed", max_new_tokens=2))


def test_page_excerpts_give_each_books_best_page_whole(tome_tiny, tmp_path):
    """``memory_excerpt_unit="page"``: the page of each chosen book's best passage goes in whole (the words
    that answer may sit beside the passage that matched), a two-book question gets a page of each book; with
    "passage" it gets a passage of each book (up to ``context_books``)."""
    from dataclasses import replace

    from retrieval.narrow import page_text

    filler = "The tide ran over the shingle and the boats lay still in the grey harbour water. " * 14
    harbour = ["The harbour master keeps the ledgers in the stone tower by the quay.",
               "The lighthouse keeper owns a tame falcon named Ossian. " + filler + "Its perch is of ash wood.",
               "Ships pay their dues each spring at the custom house."]
    moor = ["Sheep graze the high moor all summer.", "The shepherd's falcon is called Bran and hunts at dawn."]
    a = tome_tiny.ingest(make_pdf(tmp_path / "h.pdf", harbour, title="Harbour")).document
    b = tome_tiny.ingest(make_pdf(tmp_path / "m.pdf", moor, title="Moor")).document
    q = "What are the falcons called?"
    passages = [p for p in tome_tiny.store.passages(a.id) if p.page == 2]
    assert len(passages) > 1  # page 2 is longer than one passage
    tome_tiny.config = replace(tome_tiny.config, memory_excerpt_unit="page")
    got = list(tome_tiny.ask([a.id, b.id], q, mode="compressed", max_new_tokens=2))[-1]
    assert sorted((e["document_id"], e["page"]) for e in got.stats["excerpts"]) == [(a.id, 2), (b.id, 2)]
    assert got.stats["excerpt_unit"] == "page"
    one = list(tome_tiny.ask([a.id], q, mode="compressed", max_new_tokens=2))[-1]
    ranking = tome_tiny.retriever.rank([a], q)
    page = page_text(ranking, a.id, 2, tome_tiny.store.segments(a.id))
    assert "Ossian" in page and "ash wood" in page
    tome_tiny.config = replace(tome_tiny.config, memory_excerpt_unit="passage")
    short = list(tome_tiny.ask([a.id], q, mode="compressed", max_new_tokens=2))[-1]
    assert [e["document_id"] for e in short.stats["excerpts"]] == [a.id]
    both = list(tome_tiny.ask([a.id, b.id], q, mode="compressed", max_new_tokens=2))[-1]
    assert sorted(e["document_id"] for e in both.stats["excerpts"]) == [a.id, b.id]  # a passage of each book
    tome_tiny.config = replace(tome_tiny.config, context_books=1)
    assert len(list(tome_tiny.ask([a.id, b.id], q, mode="compressed", max_new_tokens=2))[-1].stats["excerpts"]) == 1
    tome_tiny.config = replace(tome_tiny.config, context_books=2)
    tok = tome_tiny.lm.tokenizer
    extra = len(tok(page)["input_ids"]) - len(tok(passages[0].text)["input_ids"])
    assert one.stats["prompt_tokens"] - short.stats["prompt_tokens"] >= extra // 2 > 0  # the whole page is read
    from ui.handlers import figures_line

    assert "+ 1 page as text" in figures_line(one) and "+ 1 passage as text" in figures_line(short)
    tome_tiny.config = replace(tome_tiny.config, memory_excerpt_unit="chapter")
    with pytest.raises(ValueError, match="memory_excerpt_unit"):
        list(tome_tiny.ask([a.id], q, mode="compressed"))


def test_segments_are_read_once_per_document_version(tmp_path, monkeypatch):
    """The answerer keeps a document's segments; a document stored again under the same id is read afresh."""
    from ingest.segments import Segment
    from storage import Store
    from tome.answer import Answerer

    store = Store(f"sqlite:///{tmp_path / 'x.sqlite'}")
    seg = [Segment(index=0, text="first text", page_start=1, page_end=1, token_start=0, token_end=4)]
    doc = store.add_document(sha256="a" * 64, title="A", filename="a.pdf", kind="pdf", pages=1, segments=seg,
                             extractor="pypdf")
    a = Answerer(models=None, store=store, retriever=None, memories=None)
    reads = []
    real = store.segments
    monkeypatch.setattr(store, "segments", lambda doc_id: reads.append(doc_id) or real(doc_id))
    first = a.segments(doc)
    first.append("a caller's own change")  # callers get their own list
    assert [s.text for s in a.segments(doc)] == ["first text"] and reads == [doc.id]
    store.delete_document(doc.id)
    again = store.add_document(sha256="b" * 64, title="B", filename="b.pdf", kind="pdf", pages=1,
                               segments=[Segment(0, "second text", 1, 1, 0, 4)], extractor="pypdf")
    assert again.id == doc.id  # SQLite gave the id again
    assert [s.text for s in a.segments(again)] == ["second text"] and reads == [doc.id, doc.id]
    store.close()


def test_the_layout_is_chosen_per_model_by_measurement():
    from tome.answer import resolve_layout

    assert [resolve_layout("auto", k) for k in ("qwen", "smollm2", None)] == ["head", "before", "before"]
    assert resolve_layout("inline", "qwen") == "inline"  # a setting wins over the measured default
    with pytest.raises(ValueError, match="memory_layout"):
        resolve_layout("sideways", "qwen")
