from dataclasses import dataclass

from retrieval.prompt import Selection, build_messages, fit_budget


@dataclass(frozen=True)
class Seg:
    text: str
    page_start: int
    page_end: int
    tokens: int

    @property
    def n_tokens(self) -> int:
        return self.tokens


def book(name, n, tokens=100):
    return name, [Seg(f"{name}-{i}", i + 1, i + 1, tokens) for i in range(n)]


def test_everything_fits_in_document_order():
    sel = fit_budget([book("A", 3), book("B", 2)], budget=1000)
    assert [p.segment.text for p in sel.passages] == ["A-0", "A-1", "A-2", "B-0", "B-1"]
    assert sel.truncated == [] and sel.tokens == 500


def test_budget_is_shared_and_leading_segments_kept():
    sel = fit_budget([book("A", 10), book("B", 10)], budget=450)
    assert [p.segment.text for p in sel.passages] == ["A-0", "A-1", "B-0", "B-1"]
    assert sel.truncated == ["A", "B"]
    assert sel.tokens <= 450


def test_short_book_passes_its_unused_share_on():
    sel = fit_budget([book("Long", 10), book("Short", 1)], budget=600)
    texts = [p.segment.text for p in sel.passages]
    assert texts == ["Long-0", "Long-1", "Long-2", "Long-3", "Long-4", "Short-0"]
    assert sel.truncated == ["Long"]


def test_messages_carry_passages_with_pages_history_and_question():
    sel = Selection(fit_budget([book("A", 2)], 1000).passages, [])
    msgs = build_messages(sel, "Where?", history=[{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "hello"}])
    assert msgs[0]["role"] == "system"
    assert "[A, p. 1]\nA-0" in msgs[0]["content"] and "[A, p. 2]\nA-1" in msgs[0]["content"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[-1]["content"] == "Where?"


def test_prompt_labels_each_page_of_a_segment():
    from retrieval.prompt import Passage, Selection, build_messages

    seg = Seg("First page text.\n\nSecond page text.", 3, 4, 10)
    p = Passage("Book", seg, 0.5, breaks=((0, 3), (18, 4)))
    assert p.labelled() == "[Book, p. 3]\nFirst page text.\n\n[p. 4]\nSecond page text."
    system = build_messages(Selection([p], []), "q")[0]["content"]
    assert "[Book, p. 3]" in system and "say that they do not" in system
    assert Passage("Book", seg).labelled().startswith("[Book, pp. 3-4]\n")


def test_short_memory_prompt_reads_one_sentence_then_the_labelled_passages():
    import pytest

    from retrieval.prompt import EXCERPTS_HEADER, MEMORY_PROMPT, SHORT_MEMORY_PROMPT, Excerpt

    ex = [Excerpt("Harbour", 2, "The keeper owns a falcon."), Excerpt("Tides", 7, "High water at noon.")]
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "system", "content": "dropped"}]
    short = build_messages(fit_budget([], 0), "Whose falcon?", history, memory_of=["Harbour", "Tides"], excerpts=ex,
                           memory_prompt="short")
    long = build_messages(fit_budget([], 0), "Whose falcon?", history, memory_of=["Harbour", "Tides"], excerpts=ex)
    assert short[0]["content"] == (SHORT_MEMORY_PROMPT + "\n\n[Harbour, p. 2]\nThe keeper owns a falcon.\n\n"
                                   "[Tides, p. 7]\nHigh water at noon.")
    assert long[0]["content"].startswith(MEMORY_PROMPT) and EXCERPTS_HEADER in long[0]["content"]
    assert short[1:] == long[1:] == [history[0], history[1], {"role": "user", "content": "Whose falcon?"}]
    # where it does not apply (no passages, passages in the question, memories inline) the long prompt stays
    for kw in ({}, {"excerpts": ex, "excerpts_in": "user"}, {"excerpts": ex, "memory_marker": "<<m>>"}):
        a = build_messages(fit_budget([], 0), "q", memory_of=["Harbour"], memory_prompt="short", **kw)
        assert a == build_messages(fit_budget([], 0), "q", memory_of=["Harbour"], **kw)
    with pytest.raises(ValueError, match="memory_prompt"):
        build_messages(fit_budget([], 0), "q", memory_of=["Harbour"], excerpts=ex, memory_prompt="tiny")
