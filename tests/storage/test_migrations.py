"""The schema comes from Alembic migrations, applied when a Store opens (SQLite or PostgreSQL)."""
from sqlalchemy import inspect

from storage import Store
from storage.migrate import MIGRATIONS, current


def _head() -> str:
    return sorted(p.name.split("_")[0] for p in (MIGRATIONS / "versions").glob("*.py"))[-1]


def test_a_new_database_is_migrated_to_head(db_url):
    store = Store(db_url)
    heads = sorted(p.name.split("_")[0] for p in (MIGRATIONS / "versions").glob("*.py"))
    assert current(store.engine) == heads[-1]
    tables = set(inspect(store.engine).get_table_names())
    assert {"documents", "segments", "memory_sets", "conversations", "messages", "alembic_version"} <= tables
    cols = {c["name"] for c in inspect(store.engine).get_columns("segments")}
    assert "embedding" in cols
    store.close()
    again = Store(db_url)  # opening again is a no-op, data kept
    assert current(again.engine) == heads[-1]
    again.close()


def test_models_and_migrations_agree(db_url):
    """A model change without a migration would make autogenerate find differences."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from storage.schema import Base, include_name

    store = Store(db_url)
    with store.engine.connect() as conn:  # full-text objects are raw DDL (see storage.schema.FULL_TEXT_NAMES)
        diff = compare_metadata(MigrationContext.configure(conn, opts={"include_name": include_name}),
                                Base.metadata)
    assert diff == []
    store.close()


def test_passages_migration_upgrades_an_existing_database(db_url):
    """A library stored at 0002 (segments with embeddings, no passages) upgrades; passages come on first use."""
    from sqlalchemy import inspect, text

    from storage.migrate import upgrade
    from storage.store import make_engine

    engine = make_engine(db_url)
    upgrade(engine, "0002")
    assert current(engine) == "0002"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO documents (id, sha256, title, filename, kind, extractor, pages, tokens, "
                          "status, created_at, embedder) VALUES (7, :sha, 'Old', 'old.pdf', 'pdf', 'pypdf', 2, 9, "
                          "'ready', CURRENT_TIMESTAMP, NULL)"), {"sha": "a" * 64})
        conn.execute(text("INSERT INTO segments (document_id, idx, page_start, page_end, token_start, token_end, "
                          "text) VALUES (7, 0, 1, 2, 0, 9, :t)"),
                     {"t": "Nothing on the first page.\n\nUse read.table to load a data file."})
    engine.dispose()

    store = Store(db_url)  # opening upgrades to head
    assert current(store.engine) == _head()
    assert "passages" in set(inspect(store.engine).get_table_names())
    doc = store.get_document(7)
    assert doc.title == "Old" and doc.passage_embedder is None and store.passages(7) == []
    assert store.segments(7)[0].text.endswith("data file.")

    from retrieval.retriever import Retriever

    hits = Retriever(store).retrieve([doc], "read.table", k=1)  # passages made now, pages estimated
    assert hits[0].page_start == 2 and "read.table" in hits[0].text
    assert store.get_document(7).passage_embedder == "all-MiniLM-L6-v2"
    assert store.search_text([7], "read.table", 1)[0].index == hits[0].passage
    store.close()


def test_passages_migration_downgrades(db_url):
    from sqlalchemy import inspect

    from storage.migrate import alembic_config
    from alembic import command

    store = Store(db_url)
    cfg = alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    assert current(store.engine) == "0002"
    names = set(inspect(store.engine).get_table_names())
    assert "passages" not in names and not any(n.startswith("passages_fts") for n in names)
    store.close()
    again = Store(db_url)  # and up again
    assert current(again.engine) == _head()
    again.close()
