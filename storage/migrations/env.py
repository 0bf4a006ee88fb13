"""Alembic environment: run by Store at start-up (storage/migrate.py), or by the alembic CLI."""
from alembic import context
from sqlalchemy import engine_from_config, pool

from storage.schema import Base, include_name

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # called from storage.migrate with an open connection
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite", include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata,
                          render_as_batch=conn.dialect.name == "sqlite", include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()


run()
