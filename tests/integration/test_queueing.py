"""Queueing knows the ids of the outbox rows it writes without reading them back one by one
(PostgreSQL takes them from the sequence, SQLite from `last_insert_rowid()`), and each
message's contents row is written under that id: a wrong id would send one person's letter
under another's envelope, so these tests compare every row with its letter."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text

from postyard.clock import utcnow
from postyard.db.engine import Database
from postyard.db.models import Delivery, DeliveryContent
from postyard.delivery import outbox
from postyard.delivery.outbox import Letter
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

LIFETIME = timedelta(days=3)


def letters(prefix: str, count: int) -> list[Letter]:
    return [
        Letter(
            "newsletter",
            f"{prefix}-{index}@example.com",
            "news@acme.example",
            f"Subject {prefix}-{index}",
            text_body=f"Dear {prefix}-{index}",
            headers={"X-Letter": f"{prefix}-{index}"},
        )
        for index in range(count)
    ]


def queue(database: Database, workspace_id: int, batch: list[Letter]) -> list[int]:
    with database.session() as session:
        return outbox.enqueue_many(session, workspace_id, batch, utcnow(), LIFETIME)


def as_stored(database: Database, ids: list[int]) -> list[tuple[str, str | None, str]]:
    """(recipient, body, header) of each id, in the order given."""
    with database.session() as session:
        rows = session.execute(
            select(
                Delivery.id,
                Delivery.to_address,
                DeliveryContent.text_body,
                DeliveryContent.headers,
            )
            .join(DeliveryContent, DeliveryContent.delivery_id == Delivery.id)
            .where(Delivery.id.in_(ids))
        )
        found = {row.id: (row.to_address, row.text_body, row.headers["X-Letter"]) for row in rows}
    return [found[id_] for id_ in ids]


def expected(batch: list[Letter]) -> list[tuple[str, str | None, str]]:
    return [
        (letter.to_address, letter.text_body, letter.to_address.split("@")[0]) for letter in batch
    ]


def test_each_queued_letter_gets_its_own_id_and_contents(
    database: Database, workspace_id: int
) -> None:
    first, second = letters("a", 5), letters("b", 3)

    first_ids = queue(database, workspace_id, first)
    second_ids = queue(database, workspace_id, second)

    assert len(set(first_ids + second_ids)) == 8
    assert as_stored(database, first_ids) == expected(first)
    assert as_stored(database, second_ids) == expected(second)


def test_ids_are_right_after_the_newest_rows_were_deleted(
    database: Database, workspace_id: int
) -> None:
    """The new rows' ids do not follow the largest id in the table any more."""
    kept = queue(database, workspace_id, letters("a", 5))
    with database.session() as session:
        session.execute(delete(DeliveryContent).where(DeliveryContent.delivery_id.in_(kept[2:])))
        session.execute(delete(Delivery).where(Delivery.id.in_(kept[2:])))
    again = letters("b", 4)

    ids = queue(database, workspace_id, again)

    assert as_stored(database, ids) == expected(again)
    assert as_stored(database, kept[:2]) == expected(letters("a", 2))


def test_rowids_out_of_sequence_fail_the_batch_and_store_nothing(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """Should the rows of one INSERT ever not take consecutive rowids (here a trigger slips
    a row of its own in after the second letter's), queueing fails whole: never a letter's
    contents under another letter's row."""
    shutil.copy(sqlite_template, tmp_path / "postyard.db")
    database = Database(f"sqlite:///{tmp_path / 'postyard.db'}")
    with database.session() as session:
        workspace_id = create_workspace(session, "Acme", Plan.PREMIUM).workspace_id
        session.execute(
            text(
                "CREATE TRIGGER slip_in AFTER INSERT ON deliveries "
                "WHEN NEW.to_address = 'a-1@example.com' BEGIN "
                "INSERT INTO deliveries (workspace_id, campaign_type, to_address, "
                "from_address, subject, message_id, status, attempts, next_attempt_at, "
                "expires_at, created_at, updated_at) VALUES (NEW.workspace_id, "
                "NEW.campaign_type, 'slipped@example.com', NEW.from_address, NEW.subject, "
                "'<slipped@example.com>', 'queued', 0, NEW.next_attempt_at, NEW.expires_at, "
                "NEW.created_at, NEW.updated_at); END"
            )
        )

    with pytest.raises(RuntimeError, match="consecutive rowids"):
        queue(database, workspace_id, letters("a", 3))

    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
        assert session.scalar(select(func.count()).select_from(DeliveryContent)) == 0
    database.dispose()
