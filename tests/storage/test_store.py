"""The Store on a real SQLite file, and the Tome service's ingestion bookkeeping around it."""
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from ingest.segments import Segment
from storage import NotFound, Store
from tests.conftest import make_pdf


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'x.sqlite'}")
    yield s
    s.close()


def _segments(n, pages_per=1, tokens_per=10, tag="seg"):
    return [Segment(index=i, text=f"{tag} {i} text", page_start=1 + i * pages_per,
                    page_end=(i + 1) * pages_per, token_start=i * tokens_per, token_end=(i + 1) * tokens_per)
            for i in range(n)]


def _add(store, sha="a" * 64, title="The Sea Wall", filename="sea-wall.pdf", n=3, **kw):
    return store.add_document(sha256=sha, title=title, filename=filename, kind="pdf", pages=n * 2,
                              segments=_segments(n, pages_per=2, **kw), extractor="pypdf")


# -- documents ----------------------------------------------------------------------

def test_document_round_trip(store):
    doc = _add(store)
    assert doc.id >= 1 and doc.ready and doc.status == "ready" and doc.error is None
    assert (doc.sha256, doc.title, doc.filename, doc.kind, doc.pages, doc.extractor) == (
        "a" * 64, "The Sea Wall", "sea-wall.pdf", "pdf", 6, "pypdf")
    assert doc.tokens == 30  # the last segment's token_end
    assert doc.created_at is not None
    assert store.list_documents() == [doc]
    assert store.get_document(doc.id) == doc
    assert store.get_document(str(doc.id)) == doc
    assert store.get_document("The Sea Wall") == doc
    assert store.get_document("the sea WALL") == doc
    assert store.get_document("sea-wall.pdf") == doc
    assert store.find_by_sha("a" * 64) == doc and store.find_by_sha("b" * 64) is None


def test_segments_round_trip_in_order(store):
    segs = _segments(5, pages_per=2, tokens_per=7)
    doc = store.add_document(sha256="c" * 64, title="T", filename="t.pdf", kind="pdf", pages=10, segments=segs)
    rows = store.segments(doc.id)
    assert [(r.document_id, r.index, r.text, r.page_start, r.page_end, r.token_start, r.token_end) for r in rows] == [
        (doc.id, s.index, s.text, s.page_start, s.page_end, s.token_start, s.token_end) for s in segs]
    assert [r.n_tokens for r in rows] == [7] * 5
    assert doc.tokens == segs[-1].token_end == 35
    assert store.count_segments() == 5


def test_list_documents_in_insertion_order(store):
    a = _add(store, sha="1" * 64, title="Alpha", filename="a.pdf")
    b = _add(store, sha="2" * 64, title="Beta", filename="b.pdf")
    assert [d.title for d in store.list_documents()] == ["Alpha", "Beta"] and a.id < b.id
    assert store.get_document("beta").id == b.id and store.get_document("a.pdf").id == a.id


def test_document_without_segments_has_zero_tokens(store):
    doc = store.add_document(sha256="e" * 64, title="Empty", filename="e.txt", kind="text", pages=1, segments=[])
    assert doc.tokens == 0 and store.segments(doc.id) == []


def test_unknown_document_is_not_found(store):
    _add(store)
    with pytest.raises(NotFound, match="999"):
        store.get_document(999)
    with pytest.raises(NotFound, match="No Such Book"):
        store.get_document("No Such Book")
    with pytest.raises(NotFound):
        store.delete_document(999)
    with pytest.raises(NotFound):
        store.finish_document(999)


def test_begin_document_is_not_ready_until_finished(store):
    doc = store.begin_document(sha256="f" * 64, title="Half", filename="h.pdf", kind="pdf", pages=2,
                               segments=_segments(2))
    assert doc.status == "ingesting" and not doc.ready
    assert [d.id for d in store.unfinished_documents()] == [doc.id]
    assert store.finish_document(doc.id).ready and store.unfinished_documents() == []


def test_delete_removes_only_that_documents_segments(store):
    a = _add(store, sha="1" * 64, title="Alpha", n=3, tag="alpha")
    b = _add(store, sha="2" * 64, title="Beta", n=4, tag="beta")
    assert store.count_segments() == 7
    store.delete_document(a.id)
    assert store.count_segments() == 4
    assert store.segments(a.id) == []
    assert [r.text for r in store.segments(b.id)] == [f"beta {i} text" for i in range(4)]
    assert [d.id for d in store.list_documents()] == [b.id]
    with pytest.raises(NotFound):
        store.get_document(a.id)
    store.delete_document(b.id)
    assert store.count_segments() == 0 and store.list_documents() == []


def test_same_sha_twice_is_refused_and_leaves_one_row(store):
    first = _add(store, sha="d" * 64, title="One", n=2)
    with pytest.raises(IntegrityError):
        _add(store, sha="d" * 64, title="Two", n=3)
    assert store.list_documents() == [first]
    assert store.count_segments() == 2  # the failed insert left none of its segments


# -- conversations ----------------------------------------------------------------------

def test_conversation_messages_in_order_with_stats(store):
    doc = _add(store)
    cid = store.new_conversation("About the sea wall", [doc.id])
    store.add_message(cid, "user", "What did the keeper count?")
    store.add_message(cid, "assistant", "Seven boats.", mode="compressed",
                      stats={"ttft_s": 0.25, "new_tokens": 3, "sources": ["The Sea Wall, p. 2"]})
    msgs = store.messages(cid)
    assert [(m.role, m.content, m.mode) for m in msgs] == [
        ("user", "What did the keeper count?", None), ("assistant", "Seven boats.", "compressed")]
    assert msgs[0].stats == {}
    assert msgs[1].stats == {"ttft_s": 0.25, "new_tokens": 3, "sources": ["The Sea Wall, p. 2"]}
    (conv,) = store.list_conversations()
    assert (conv.id, conv.title, conv.document_ids) == (cid, "About the sea wall", [doc.id])
    assert conv.created_at is not None
    # a conversation started with its first question: the same rows as two calls
    both = store.new_conversation("Again", [doc.id], question="What did the keeper count?")
    store.add_message(both, "assistant", "Seven boats.", mode="compressed")
    assert [(m.role, m.content, m.mode, m.stats) for m in store.messages(both)] == [
        ("user", "What did the keeper count?", None, {}), ("assistant", "Seven boats.", "compressed", {})]


def test_conversations_newest_first_and_titles_capped(store):
    ids = [store.new_conversation(f"Conversation {i}", []) for i in range(3)]
    long_id = store.new_conversation("x" * 500, [1, 2])
    convs = store.list_conversations()
    assert [c.id for c in convs] == [long_id] + ids[::-1]
    assert convs[0].title == "x" * 200 and convs[0].document_ids == [1, 2]
    assert store.messages(ids[0]) == []


def test_message_to_unknown_conversation_is_not_found(store):
    with pytest.raises(NotFound, match="42"):
        store.add_message(42, "user", "Hello?")
    assert store.list_conversations() == []


# -- SQLite settings ----------------------------------------------------------------------

def test_sqlite_runs_in_wal_mode_with_foreign_keys(store):
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_data_survives_reopening(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'x.sqlite'}"  # the folder is made on demand
    s = Store(url)
    doc = _add(s)
    cid = s.new_conversation("c", [doc.id])
    s.add_message(cid, "user", "hi")
    s.close()
    s = Store(url)
    try:
        assert s.get_document("The Sea Wall") == doc
        assert len(s.segments(doc.id)) == 3 and [m.content for m in s.messages(cid)] == ["hi"]
    finally:
        s.close()


# -- the service around the store --------------------------------------------------------------

def test_ingesting_the_same_pdf_twice_is_a_duplicate(tome_tiny, tmp_path):
    pdf = make_pdf(tmp_path / "tides.pdf", ["The tide came in at noon.", "The gulls left at dusk."], title="Tides")
    first = tome_tiny.ingest(pdf)
    assert first.ok and not first.duplicate and first.error is None
    assert first.document.title == "Tides" and first.document.pages == 2 and first.document.ready
    n_segments = tome_tiny.store.count_segments()
    assert n_segments >= 1
    second = tome_tiny.ingest(pdf, filename="another-name.pdf")
    assert second.duplicate and second.error is None and second.document.id == first.document.id
    assert [d.id for d in tome_tiny.store.list_documents()] == [first.document.id]
    assert tome_tiny.store.count_segments() == n_segments
    assert [f.name for f in tome_tiny.config.uploads_path.iterdir()] == [f"{first.document.sha256}.pdf"]


@pytest.mark.parametrize("name, content", [
    ("bad.pdf", b"\x00\x01garbage that is not a pdf" * 20),
    ("cut.pdf", None),  # a truncated real PDF
    ("blank.pdf", "empty-pages"),
])
def test_a_bad_file_leaves_nothing_behind(tome_tiny, tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        data = make_pdf(tmp_path / "whole.pdf", ["Some text on a page."]).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "empty-pages":
        make_pdf(path, ["", ""])
    else:
        path.write_bytes(content)
    r = tome_tiny.ingest(path)
    assert not r.ok and r.document is None and r.error and r.error.startswith(f"{name}:")
    assert tome_tiny.store.list_documents() == []
    assert tome_tiny.store.count_segments() == 0
    uploads = tome_tiny.config.uploads_path
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_delete_removes_the_document_and_its_upload(tome_tiny, tmp_path):
    keep = tome_tiny.ingest(make_pdf(tmp_path / "keep.pdf", ["A book to keep."]))
    gone = tome_tiny.ingest(make_pdf(tmp_path / "gone.pdf", ["A book to delete.", "Its second page."]))
    assert keep.ok and gone.ok
    uploads = tome_tiny.config.uploads_path
    gone_upload = uploads / f"{gone.document.sha256}.pdf"
    keep_upload = uploads / f"{keep.document.sha256}.pdf"
    assert gone_upload.read_bytes() == (tmp_path / "gone.pdf").read_bytes() and keep_upload.is_file()
    keep_segments = tome_tiny.store.segments(keep.document.id)

    tome_tiny.delete(gone.document.id)

    assert [d.id for d in tome_tiny.store.list_documents()] == [keep.document.id]
    assert tome_tiny.store.segments(gone.document.id) == []
    assert tome_tiny.store.segments(keep.document.id) == keep_segments
    assert tome_tiny.store.count_segments() == len(keep_segments)
    assert not gone_upload.exists() and keep_upload.is_file()
    assert list(tome_tiny.files.of_document(gone.document.sha256)) == []
    with pytest.raises(NotFound):
        tome_tiny.delete(gone.document.id)
    # deleted, it can be ingested again as a new document
    again = tome_tiny.ingest(tmp_path / "gone.pdf")
    assert again.ok and not again.duplicate and again.document.sha256 == gone.document.sha256
    assert len(tome_tiny.store.list_documents()) == 2 and gone_upload.is_file()


def test_deleting_a_book_removes_it_from_conversations(tmp_path):
    """SQLite reuses the highest id after a delete; an old conversation must not adopt the new book."""
    store = Store(f"sqlite:///{tmp_path / 'c.sqlite'}")
    a = store.add_document(sha256="a" * 64, title="A", filename="a.pdf", kind="pdf", pages=1, segments=[])
    b = store.add_document(sha256="b" * 64, title="B", filename="b.pdf", kind="pdf", pages=1, segments=[])
    conv = store.new_conversation("about both", [a.id, b.id])
    store.delete_document(b.id)
    assert store.list_conversations()[0].document_ids == [a.id]
    c = store.add_document(sha256="c" * 64, title="C", filename="c.pdf", kind="pdf", pages=1, segments=[])
    assert c.id not in next(x for x in store.list_conversations() if x.id == conv).document_ids
    store.close()
