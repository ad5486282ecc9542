"""Alembic environment: migrations run against the URL `postyard.db.migrate` hands in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from postyard.db.engine import make_engine
from postyard.db.models import Base


def run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        _without_foreign_keys(connection)
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _without_foreign_keys(connection: Connection) -> None:
    """SQLite alters a table by copying it and dropping the old one: with foreign keys on,
    that drop would cascade and delete every row that refers to the table (a user's keys,
    servers and mail). The pragma only takes effect outside a transaction."""
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as fresh_connection:
        run_migrations(fresh_connection)
    engine.dispose()
