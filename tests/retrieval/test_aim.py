"""retrieval.aim: a passage re-cut around the question's best sentence, at its length, on its page."""
from dataclasses import replace

from retrieval.aim import Span, aim, aimed, best_sentence, sentences
from retrieval.retriever import Retrieved

FILLER = "The tide ran over the shingle and the boats lay still in the grey harbour water. " * 6
# The question's words ("keyseq-timeout", "default") end the first window; the value follows it.
PAGE = (FILLER + "keyseq-timeout\nSpecifies how long Readline waits for a character of an ambiguous key "
        "sequence. The default value is 500 milliseconds. " + FILLER)
QUESTION = "What is the default value of keyseq-timeout?"


def _passage(text: str, end_word: str) -> Span:
    end = text.index(end_word) + len(end_word)
    return Span(end - 500, end)


def test_sentences_end_at_stops_and_blank_lines_not_at_line_breaks():
    text = "One line\ngoes on. Two: three!\n\nFour"
    assert [text[s.start:s.end] for s in sentences(text, 0, len(text))] == [
        "One line\ngoes on.", "Two:", "three!", "Four"]


def test_best_sentence_weighs_rare_words_and_stems():
    text = "The shell reads commands. The shell computed a value for timeouts. The shell runs."
    spans = sentences(text, 0, len(text))
    best = best_sentence(text, spans, "How is the timeout computing done by the shell?")
    assert text[best.start:best.end] == "The shell computed a value for timeouts."
    assert best_sentence(text, spans, "zebra quagga") is None


def test_the_window_moves_to_the_answer_and_keeps_its_length():
    passage = _passage(PAGE, "ambiguous key")
    assert "500" not in PAGE[passage.start:passage.end]  # as ranked, the value lies past the edge
    got = aim(PAGE, passage, Span(0, len(PAGE)), QUESTION)
    cut = PAGE[got.start:got.end]
    assert "keyseq-timeout" in cut and "500 milliseconds" in cut
    assert passage.end - passage.start - 20 <= got.end - got.start <= passage.end - passage.start
    assert got.start == 0 or PAGE[got.start - 1].isspace()  # starts at a word
    # the best sentence starts the window after a short lead (LEAD of it), not in its middle
    assert cut.index("keyseq-timeout") <= 0.25 * len(cut)


def test_the_window_stays_on_the_page_and_starts_at_a_word_near_its_end():
    page = FILLER + "The default value of keyseq-timeout is 500."
    passage = Span(100, 400)
    got = aim(page, passage, Span(0, len(page)), QUESTION)
    assert got.end == len(page) and got.end - got.start <= 300
    assert page[got.start - 1].isspace() and page[got.start:got.end].endswith("500.")


def test_no_shared_word_or_a_short_page_keeps_the_passage():
    passage = _passage(PAGE, "ambiguous key")
    assert aim(PAGE, passage, Span(0, len(PAGE)), "zebra quagga?") == passage
    assert aim(PAGE, Span(10, 60), Span(0, 50), QUESTION) == Span(10, 60)


def test_aimed_cuts_from_the_page_and_falls_back_to_the_hit():
    passage = _passage(PAGE, "ambiguous key")
    hit = Retrieved(1, "Bash", 0, PAGE[passage.start:passage.end], 3, 3, 1.0, 0, passage.start, passage.end)
    assert "500 milliseconds" in aimed(hit, PAGE, QUESTION)
    elsewhere = replace(hit, text="words on no page")
    assert aimed(elsewhere, PAGE, QUESTION) == "words on no page"


def test_compressed_mode_reads_the_aimed_passage(tome_tiny, tmp_path):
    """Config.memory_excerpt_aim: compressed mode's excerpt is the passage re-cut on its page (on), or the
    passage as ranked (off, the default)."""
    from retrieval.narrow import best_per_book, page_text
    from tests.conftest import make_pdf
    from tome.answer import CompressedContext

    doc = tome_tiny.ingest(make_pdf(tmp_path / "b.pdf", ["Contents.", PAGE], title="Bash")).document
    docs = [doc]
    stored = [tome_tiny.store.segments(doc.id)]
    ranking = tome_tiny.retriever.rank(docs, QUESTION)
    hit = next(best_per_book(ranking, {doc.id}, 1, 1))
    page = page_text(ranking, doc.id, hit.page_start, stored[0])
    assert not tome_tiny.config.memory_excerpt_aim  # off by default (measured level, docs/COMPRESSION.md)
    tome_tiny.config = replace(tome_tiny.config, memory_excerpt_aim=True)
    on = CompressedContext(tome_tiny.answerer)._excerpts(docs, ranking, stored, QUESTION)
    assert [e.text for e in on] == [aimed(hit, page, QUESTION)]
    assert [e.page for e in on] == [hit.page_start]
    tome_tiny.config = replace(tome_tiny.config, memory_excerpt_aim=False)
    off = CompressedContext(tome_tiny.answerer)._excerpts(docs, ranking, stored, QUESTION)
    assert [e.text for e in off] == [hit.text]


def test_any_window_stays_on_its_page_no_longer_than_the_passage_and_starts_at_a_word():
    import random

    rng = random.Random(7)
    words = ["timeout", "default", "value", "shell", "reads", "the", "of", "500.", "key:", "sequence.", "\n", "\n\n"]
    question = "What is the default value of the shell timeout?"
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))
        a = rng.randint(0, len(text) // 2)
        page = Span(a, rng.randint(a + 1, len(text)))
        p0 = rng.randint(page.start, page.end - 1)
        passage = Span(p0, rng.randint(p0 + 1, page.end))
        if passage.end - passage.start < 40:  # real passages are ~200 word pieces; a window of one word stays cut
            continue
        got = aim(text, passage, page, question)
        if got == passage:
            continue
        assert page.start <= got.start < got.end <= page.end
        assert got.end - got.start <= passage.end - passage.start
        assert got.start == page.start or text[got.start - 1].isspace()
        assert got.end == page.end or text[got.end].isspace()


def test_a_scaled_window_is_shorter_and_still_holds_the_answer():
    """``scale`` (Config.memory_excerpt_scale): a window of that share of the passage's length around the same
    sentence; with no sentence sharing a word, the passage's first words."""
    passage = _passage(PAGE, "ambiguous key")
    full = passage.end - passage.start
    got = aim(PAGE, passage, Span(0, len(PAGE)), QUESTION, scale=0.5)
    cut = PAGE[got.start:got.end]
    assert "keyseq-timeout" in cut and "500 milliseconds" in cut
    assert full // 2 - 20 <= got.end - got.start <= full // 2
    none = aim(PAGE, passage, Span(0, len(PAGE)), "zebra quagga", scale=0.5)
    assert none.start == passage.start and full // 2 - 20 <= none.end - none.start <= full // 2
    assert PAGE[none.end].isspace()  # ends between words
