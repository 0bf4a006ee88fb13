"""An answer that only restates the question is read again over each book's best page alone."""
import torch

from retrieval.narrow import best_pages, page_text
from tests.conftest import make_pdf

FILLER = "The committee met on Tuesday and discussed the budget, the roads and the new library. "
FALCON = "The Birch lighthouse keeper owns a tame falcon named Ossian. "
QUESTION = "What is the name of the lighthouse keeper's falcon?"


def _birch(tmp_path):
    # page 2 is longer than one 64-token segment: its text is cut from two segments
    return make_pdf(tmp_path / "Birch.pdf", [FILLER * 3, FALCON + FILLER * 4 + "Gulls nest on the roof.", FILLER * 3],
                    title="Birch")


def _alder(tmp_path):
    return make_pdf(tmp_path / "Alder.pdf", [FILLER * 3, "The Alder orchard grows forty apple trees. " + FILLER * 2],
                    title="Alder")


def _silent(tome):
    """The tiny reader made to say nothing (every logit equal: it emits a special token, shown as "")."""
    head = tome.lm.model.get_output_embeddings()
    with torch.no_grad():
        head.weight.zero_()


def test_a_page_is_cut_whole_from_the_segments_it_spans(tome_tiny, tmp_path):
    doc = tome_tiny.ingest(_birch(tmp_path)).document
    segs = tome_tiny.store.segments(doc.id)
    assert sum(s.page_start <= 2 <= s.page_end for s in segs) >= 2  # the page spans segments
    ranking = tome_tiny.retriever.rank([doc], QUESTION)
    text = page_text(ranking, doc.id, 2, segs)
    assert text.startswith("The Birch lighthouse keeper") and text.rstrip().endswith("Gulls nest on the roof.")
    assert text.count("committee") == 4  # page 2's filler, none of pages 1 and 3
    sel, owner = best_pages(ranking, {doc.id: "Birch"}, lambda _: segs, lambda t: len(t.split()))
    [p] = sel.passages
    assert (p.title, p.segment.page_start, p.segment.text) == ("Birch", 2, text)
    assert owner[id(p.segment)] == doc.id and p.match.page_start == 2 and sel.tokens == len(text.split())
    two, _ = best_pages(ranking, {doc.id: "Birch"}, lambda _: segs, lambda t: len(t.split()), pages=2)
    pages = [q.segment.page_start for q in two.passages]
    assert pages[0] == 2 and len(pages) == 2 and len(set(pages)) == 2  # the next best passage's page, not page 2 again
    assert [q.segment.page_start for q in two.passages] == list(dict.fromkeys(
        h.page_start for h in ranking.hits if h.document_id == doc.id))[:2]  # in the ranking's order


def test_an_answer_that_restates_the_question_is_asked_again_over_the_best_page(tome_tiny, tmp_path):
    birch = tome_tiny.ingest(_birch(tmp_path)).document
    alder = tome_tiny.ingest(_alder(tmp_path)).document
    _silent(tome_tiny)
    updates = list(tome_tiny.ask([alder.id, birch.id], QUESTION, max_new_tokens=4))
    final = updates[-1]
    assert final.text == "" and final.stats["restates_question"]  # the second read said nothing either
    reread = final.stats["reread"]
    assert reread["first_answer"] == "" and reread["pages"][0] == "Birch, p. 2" and len(reread["pages"]) == 2
    assert final.sources[0].label() == "Birch, p. 2"
    assert final.context_tokens == final.stats["context_tokens"] < reread["first_context_tokens"]
    assert any("re-reading Birch, p. 2" in u.note for u in updates) and final.note == ""
    stored = tome_tiny.store.messages(final.conversation_id)[1].stats
    assert stored["reread"]["pages"][0] == "Birch, p. 2" and stored["sources"][0]["page_start"] == 2


def test_a_compressed_answer_that_restates_the_question_is_read_again_as_text(tome_tiny, tmp_path):
    birch = tome_tiny.ingest(_birch(tmp_path)).document
    _silent(tome_tiny)
    final = list(tome_tiny.ask([birch.id], QUESTION, max_new_tokens=2, mode="compressed"))[-1]
    assert final.stats["restates_question"] and final.stats["reread"]["pages"] == ["Birch, p. 2"]
    assert final.stats["memory_slots"] > 0  # the first read was the memories' (its figures stay)
    assert final.sources[0].label() == "Birch, p. 2" and final.context_tokens == final.stats["context_tokens"] > 0
    from ui.handlers import figures_line
    line = figures_line(final)  # the memories' slots, and the page's tokens named as the second read's
    assert f"{final.stats['memory_slots']:,} memory slots" in line
    assert f"re-read as text: {final.context_tokens:,} tokens" in line
    assert final.stats["memory_slots"] != final.context_tokens
    tome_tiny.config.memory_excerpts = 0  # memories alone: no text read, so none on the second read either
    alone = list(tome_tiny.ask([birch.id], QUESTION, max_new_tokens=2, mode="compressed"))[-1]
    assert alone.stats["restates_question"] and "reread" not in alone.stats and alone.stats["excerpts"] == []


def test_no_second_read_when_turned_off(tome_tiny, tmp_path):
    birch = tome_tiny.ingest(_birch(tmp_path)).document
    _silent(tome_tiny)
    tome_tiny.config.reread = False
    for mode in ("uncompressed", "compressed"):
        plain = list(tome_tiny.ask([birch.id], QUESTION, max_new_tokens=2, mode=mode))[-1]
        assert plain.stats["restates_question"] and "reread" not in plain.stats


def _naming(tome, tokens=(" HTTP", " JSON")):
    """The tiny reader made to name a term at every step: one hidden dimension decides which of two."""
    ids = [tome.lm.tokenizer.encode(t, add_special_tokens=False) for t in tokens]
    assert all(len(i) == 1 for i in ids)
    model = tome.lm.model
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        head = model.get_output_embeddings()
        head.weight.zero_()
        head.weight[ids[0][0], 0], head.weight[ids[1][0], 0] = 100.0, -100.0


def test_an_answer_naming_a_term_it_did_not_read_is_marked_not_read_again(tome_tiny, tmp_path):
    """Named, not read: the terms are in the answer's figures and the note under it; the page is not read again
    (that changed no answer of 122 real-manual questions, docs/COMPRESSION.md "Fifteenth run")."""
    from ui.handlers import doubt_message

    birch = tome_tiny.ingest(_birch(tmp_path)).document
    _naming(tome_tiny)
    for mode in ("uncompressed", "compressed"):
        final = list(tome_tiny.ask([birch.id], QUESTION, max_new_tokens=3, mode=mode))[-1]
        assert set(final.stats["foreign_terms"]) & {"HTTP", "JSON"} and set(final.stats["foreign_terms"]) <= {
            "HTTP", "JSON"}, mode
        assert not final.stats["restates_question"] and "reread" not in final.stats
        note = doubt_message(final.stats)
        assert note["metadata"]["title"] == "⚠ Named, not read" and "The answer names" in note["content"]
        stored = tome_tiny.store.messages(final.conversation_id)[-1].stats
        assert stored["foreign_terms"] == final.stats["foreign_terms"]
