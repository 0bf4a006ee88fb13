"""The retriever: passages made lazily, exact terms found anywhere in a segment, hybrid ranking."""
from tests.conftest import MANUAL, manual_store


def _long_segments():
    """Three segments of ~1,000 Qwen tokens with the same text, but segment 1 ends with a rare fact."""
    from ingest.segments import Segment

    filler = " ".join(f"The council reviewed item {i} of the harbour budget and approved the minutes."
                      for i in range(70))
    fact = " To count the nesting pelicans, run the command zqxtally --by-colony on the census file."
    texts = [filler, filler + fact, filler]
    return [Segment(i, t, i + 1, i + 1, 1024 * i, 1024 * (i + 1)) for i, t in enumerate(texts)]



def test_documents_without_passages_get_them_on_first_use(tome_tiny):
    from ingest.segments import Segment

    segs = [Segment(0, "Nothing here.", 1, 1, 0, 3), Segment(1, "The vault code is 4417.", 2, 2, 3, 9)]
    doc = tome_tiny.store.add_document(sha256="e" * 64, title="Old", filename="old.pdf", kind="pdf", pages=2,
                                       segments=segs)
    assert doc.embedder is None and doc.passage_embedder is None and tome_tiny.store.passages(doc.id) == []
    hits = tome_tiny.retrieve([doc.id], "What is the vault code?", k=1)
    assert [(h.index, h.page_start, h.text) for h in hits] == [(1, 2, "The vault code is 4417.")]
    assert tome_tiny.document(doc.id).passage_embedder == "all-MiniLM-L6-v2"
    assert [(p.segment, p.page) for p in tome_tiny.store.passages(doc.id)] == [(0, 1), (1, 2)]
    assert all(b is not None for b in tome_tiny.store.passage_embeddings(doc.id))
    # the old whole-segment vectors are still made on demand, for comparison
    tome_tiny.retriever.segment_scores([tome_tiny.document(doc.id)], "vault")
    assert all(b is not None for b in tome_tiny.store.embeddings(doc.id))


def test_a_term_at_the_end_of_a_long_segment_is_found(db_url):
    from retrieval.retriever import Retriever
    from storage import Store

    store = Store(db_url)
    doc = store.add_document(sha256="f" * 64, title="Harbour", filename="h.pdf", kind="pdf", pages=3,
                             segments=_long_segments())
    r = Retriever(store)
    assert len(r.embedder.tokenizer(_long_segments()[1].text)["input_ids"]) > 3 * 256  # far past the window
    # the old whole-segment vector sees only the first 256 word pieces: identical for the three segments
    old = r.segment_scores([doc], "How do I count the nesting pelicans?")[doc.id]
    assert abs(old[1] - old[0]) < 1e-5 and abs(old[1] - old[2]) < 1e-5
    for mode in ("vector", "lexical", "hybrid"):
        top = r.retrieve([store.get_document(doc.id)], "How do I count the nesting pelicans?", k=1, mode=mode)[0]
        assert (top.index, top.page_start) == (1, 2) and "zqxtally" in top.text, mode
    exact = r.retrieve([store.get_document(doc.id)], "zqxtally", k=1, mode="lexical")
    assert exact and exact[0].index == 1
    scores = r.scores([store.get_document(doc.id)], "How do I count the nesting pelicans?")[doc.id]
    assert max(scores, key=scores.get) == 1
    store.close()


def test_hybrid_ranking_puts_the_passage_both_indexes_like_first(db_url, monkeypatch):
    from retrieval.retriever import Retriever
    from retrieval.search import Hit
    from storage import TextHit

    store, doc = manual_store(db_url)
    r = Retriever(store)
    doc = store.get_document(doc.id)
    r.with_passages = lambda docs: list(docs)  # the fixture's passages carry no vectors: rank by fiat
    monkeypatch.setattr(r.passage_vectors, "search", lambda q, docs, k: [
        Hit(doc.id, 0, 0.9), Hit(doc.id, 2, 0.8), Hit(doc.id, 4, 0.7)])
    monkeypatch.setattr(store, "search_text", lambda ids, q, k: [
        TextHit(doc.id, 3, 9.0), TextHit(doc.id, 2, 5.0), TextHit(doc.id, 1, 1.0)])
    hits = r.rank([doc], "anything").hits
    assert hits[0].passage == 2 and hits[0].vector == 0.8 and hits[0].lexical == 5.0
    assert hits[0].page_start == MANUAL[2][0]
    assert {h.passage for h in hits} == {0, 1, 2, 3, 4}
    store.close()


TOC = ("Contents\n"
       "1 Pelicans . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . 1\n"
       "1.1 Counting the nesting pelicans . . . . . . . . . . . . . . . . . . . . . 2\n"
       "1.2 The census file . . . . . . . . . . . . . . . . . . . . . . . . . . . . 3\n"
       "2 Herons . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . 4\n")


def test_tables_of_contents_and_indexes_are_told_from_text():
    from retrieval.passages import is_navigation

    assert is_navigation(TOC)
    assert is_navigation("zqxtally . . . . . . . . . 2\n--by-colony . . . . . . . . 2\nheron . . . . . . 4\n"
                         "pelican, nesting . . . . . . . . . . . xii")  # an index, a roman page number
    assert not is_navigation(_long_segments()[1].text)
    assert not is_navigation("Wait . . . . and then count.\nThe census file lists 12 colonies.")  # one line
    prose = "\n".join(["The census ran for a week."] * 8)
    assert not is_navigation(prose + "\n" + TOC.splitlines()[1] + "\n" + TOC.splitlines()[2]
                             + "\n" + TOC.splitlines()[3])  # three leader lines of eleven: prose with a list


def test_demote_navigation_ranks_a_table_of_contents_after_the_text(db_url):
    """The contents page matches the question's words best; with the option it ranks after every passage of
    text, without it first."""
    from ingest.segments import Segment
    from retrieval.retriever import Retriever
    from storage import Store

    store = Store(db_url)
    body = ("On the first morning the wardens walk the shore. To count the nesting pelicans, run zqxtally on "
            "the census file, colony by colony.")
    doc = store.add_document(sha256="a" * 64, title="Birds", filename="b.pdf", kind="pdf", pages=2,
                             segments=[Segment(0, TOC, 1, 1, 0, 90), Segment(1, body, 2, 2, 90, 130)])
    q = "Counting the nesting pelicans: the census file"
    plain = Retriever(store).rank([store.get_document(doc.id)], q).hits
    demoted = Retriever(store, demote_navigation=True).rank([store.get_document(doc.id)], q).hits
    assert plain[0].page_start == 1  # the contents line holds every word of the question
    assert demoted[0].page_start == 2 and demoted[-1].page_start == 1
    assert {h.passage for h in plain} == {h.passage for h in demoted}  # demoted, not dropped
    store.close()
