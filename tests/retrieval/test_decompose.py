"""A question asking two things is also searched part by part, so the weaker book's answering page ranks."""
import pytest

from retrieval.decompose import parts


@pytest.mark.parametrize("question, expected", [
    ("Which R function reads CSV files, and which gnuplot command sets the separator?",
     ["Which R function reads CSV files", "which gnuplot command sets the separator?"]),
    ("At which university was R first written, and who originally prepared the gnuplot manual?",
     ["At which university was R first written", "who originally prepared the gnuplot manual?"]),
    ("What does set -e do; how is it turned off?", ["What does set -e do", "how is it turned off?"]),
])
def test_a_two_part_question_splits_into_its_questions(question, expected):
    assert parts(question) == expected


@pytest.mark.parametrize("question", [
    "Where do R and Bash keep a session's command history by default?",  # "and" inside one question
    "Which program versions do the Bash Reference Manual and the Asymptote manual document?",
    "What is the vault code?",
    "Which option is it, and why?",  # a part of under three words is no question of its own
])
def test_a_single_question_stays_whole(question):
    assert parts(question) == []


def _book(store, sha: str, title: str, pages: list[str]):
    from ingest.segments import Segment

    segs = [Segment(i, t, i + 1, i + 1, 100 * i, 100 * (i + 1)) for i, t in enumerate(pages)]
    return store.add_document(sha256=sha * 64, title=title, filename=f"{title}.pdf", kind="pdf",
                              pages=len(pages), segments=segs)


def test_the_second_part_finds_its_page_in_the_other_book(db_url):
    from retrieval.retriever import Retriever
    from storage import Store

    store = Store(db_url)
    alpha = _book(store, "a", "Alpha", [
        "Alpha's function loadgrid reads comma separated files into a table.",
        "Alpha draws pictures of tables on the screen."])
    beta = _book(store, "b", "Beta", [  # four pages that share the first part's words, one that answers
        "In Beta, a function reads comma separated files; the divider between their fields is a comma.",
        "Beta's plot function reads comma separated files, whatever divider their fields use.",
        "Comma separated files: the function that reads them in Beta finds the divider itself.",
        "A Beta function reads comma separated files with a divider other than the comma as well.",
        "The command set divider tells Beta which character splits two fields.",
    ] + [f"The palette command sets colour number {i} of a surface plot in Beta." for i in range(12)])
    question = "Which function reads comma separated files, and which command sets the divider?"
    r = Retriever(store)

    def beta_rank(decompose: bool) -> int:
        r.decompose = decompose
        hits = [h for h in r.rank([alpha, beta], question).hits if h.document_id == beta.id]
        return [h.page_start for h in hits].index(5)

    whole, split = beta_rank(False), beta_rank(True)
    assert whole >= 2 and split <= 1, (whole, split)
    first = next(h for h in r.rank([alpha, beta], question).hits if h.document_id == alpha.id)
    assert first.page_start == 1  # the first part's page still leads its own book
    store.close()
