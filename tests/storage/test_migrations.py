"""The schema comes from Alembic migrations, applied when a Store opens (SQLite or PostgreSQL)."""
from sqlalchemy import inspect

from storage import Store
from storage.migrate import MIGRATIONS, current


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

    from storage.schema import Base

    store = Store(db_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    store.close()
