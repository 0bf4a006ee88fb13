"""The store's full-text search: FTS5 on SQLite, tsvector on PostgreSQL, same answers."""
import pytest
from tests.conftest import MANUAL, manual_store



FULL_TEXT_CASES = [("What does read.table do?", 1), ("How do I set the PS1 prompt?", 3),
                   ("ENOENT", 4), ("which terminal for plots", 5), ("table of contents", 2)]


def test_full_text_finds_exact_terms_and_survives_query_syntax(db_url):
    store, doc = manual_store(db_url)
    for query, page in FULL_TEXT_CASES:  # SQLite FTS5 and PostgreSQL agree on the top passage
        hits = store.search_text([doc.id], query, 3)
        assert hits and MANUAL[hits[0].index][0] == page, (query, hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for nasty in ['"', "NEAR(", "a OR", "*", "col:umn", "AND NOT", "-x", "'; DROP TABLE passages; --", "(((",
                  "the of a"]:
        store.search_text([doc.id], nasty, 3)  # never a syntax error
    assert store.search_text([doc.id], "", 3) == [] and store.search_text([], "table", 3) == []
    assert store.search_text([doc.id + 1], "table", 3) == []  # only the chosen documents
    store.close()


def test_fts5_and_postgresql_return_the_same_top_passages(tmp_path):
    import os

    if not os.environ.get("TOME_TEST_PG"):
        pytest.skip("TOME_TEST_PG not set")
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["TOME_TEST_PG"])
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    lite, a = manual_store(f"sqlite:///{tmp_path / 'm.sqlite'}")
    pg, b = manual_store(os.environ["TOME_TEST_PG"])
    for query, _ in FULL_TEXT_CASES:
        assert lite.search_text([a.id], query, 1)[0].index == pg.search_text([b.id], query, 1)[0].index, query
    lite.close()
    pg.close()


def test_deleting_a_document_removes_its_passages_from_the_full_text_index(db_url):
    from sqlalchemy import text

    store, doc = manual_store(db_url)
    assert store.count_passages([doc.id]) == len(MANUAL)
    store.delete_document(doc.id)
    assert store.count_passages() == 0 and store.search_text([doc.id], "table", 5) == []
    if store.engine.dialect.name == "sqlite":
        with store.engine.begin() as conn:  # raises if the index and the passages table disagree
            conn.execute(text("INSERT INTO passages_fts(passages_fts) VALUES ('integrity-check')"))
    store.close()
