"""Upgrading a database that holds data keeps every row.

On SQLite a migration that alters a table rebuilds it; with foreign keys on,
dropping the old table would cascade into every table that refers to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from sqlalchemy import Connection, create_engine, text

from postyard.db.migrate import alembic_config

ROWS = {
    "workspaces": "INSERT INTO workspaces (name, plan, created_at) VALUES ('a', 'premium', :t)",
    "api_keys": "INSERT INTO api_keys (workspace_id, name, key_hash, scope, created_at) "
    "VALUES (1, 'default', 'abc', 'admin', :t)",
    "smtp_servers": "INSERT INTO smtp_servers (workspace_id, name, host, port, security, "
    "role, position, max_connections, created_at, updated_at) "
    "VALUES (1, 'main', 'smtp.example.com', 587, 'starttls', 'all_emails', 1, 4, :t, :t)",
    "people": "INSERT INTO people (workspace_id, person_id, email, attributes, unsubscribed, "
    "created_at, updated_at) VALUES (1, 'p1', 'p1@example.com', '{}', 0, :t, :t)",
    "deliveries": "INSERT INTO deliveries (workspace_id, campaign_type, to_address, "
    "from_address, subject, message_id, status, attempts, next_attempt_at, expires_at, "
    "created_at, updated_at) VALUES (1, 'newsletter', 'p1@example.com', 'a@example.com', "
    "'Hi', '<1@example.com>', 'queued', 0, :t, :t, :t, :t)",
}


@contextmanager
def upgraded(tmp_path: Path, revision: str, statements: Sequence[str]) -> Iterator[Connection]:
    """A SQLite database migrated to `revision`, given rows by `statements`, then upgraded
    to the head: a connection to it."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), revision)
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement), {"t": "2026-01-01 00:00:00"})
        command.upgrade(alembic_config(url), "head")
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def test_upgrading_a_populated_sqlite_database_from_0003_keeps_every_row(
    tmp_path: Path,
) -> None:
    with upgraded(tmp_path, "0003", list(ROWS.values())) as connection:
        counts = {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ROWS
        }
    assert counts == dict.fromkeys(ROWS, 1)


def test_upgrading_moves_each_delivery_s_bodies_and_headers_to_its_contents_row(
    tmp_path: Path,
) -> None:
    with_contents = (
        "UPDATE deliveries SET text_body = 'Hello', html_body = '<p>Hello</p>', "
        'headers = \'{"X-Campaign": "7"}\''
    )
    statements = [ROWS["workspaces"], ROWS["deliveries"], with_contents]
    with upgraded(tmp_path, "0005", statements) as connection:
        contents = connection.execute(
            text("SELECT delivery_id, text_body, html_body, headers FROM delivery_contents")
        ).all()
        columns = {row[1] for row in connection.execute(text("PRAGMA table_info(deliveries)"))}
        autoincrement = connection.execute(
            text("SELECT count(*) FROM sqlite_sequence WHERE name = 'deliveries'")
        ).scalar_one()
    assert [tuple(row) for row in contents] == [(1, "Hello", "<p>Hello</p>", '{"X-Campaign": "7"}')]
    assert not columns & {"text_body", "html_body", "headers"}
    assert autoincrement == 1, "deliveries keeps AUTOINCREMENT: ids are never reused"
