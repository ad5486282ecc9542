"""`Bulk` statements store exactly what SQLAlchemy's own executemany stores, on both backends:
the outbox's queueing and recording go through them, so a difference in how a timestamp, a
JSON value, a status or a NULL is written would show up as wrong mail, not as an error."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Text, bindparam, cast, insert, select, update

from postyard.clock import utcnow
from postyard.db.bulk import Bulk
from postyard.db.engine import Database
from postyard.db.models import Delivery, DeliveryContent
from postyard.delivery.policy import Status
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

COLUMNS = ("workspace_id", "campaign_type", "to_address", "from_address", "subject")
COLUMNS += ("message_id", "status", "attempts", "next_attempt_at", "expires_at")
COLUMNS += ("reply_to", "created_at", "updated_at")


def outbox_rows(workspace_id: int, prefix: str, now: datetime) -> list[dict[str, object]]:
    shared_expiry = now + timedelta(days=3)
    return [
        {
            "workspace_id": workspace_id,
            "campaign_type": "newsletter",
            "to_address": f"reader-{index}@example.com",
            "from_address": "Acme <news@acme.example>",
            "subject": f"Grüße #{index}",
            "message_id": f"<{prefix}-{index}@acme.example>",
            "status": Status.QUEUED,
            "attempts": 0,
            # one object shared by every row, and one of its own per row
            "next_attempt_at": now + timedelta(seconds=index),
            "expires_at": shared_expiry,
            "reply_to": None if index % 2 else "help@acme.example",
            "created_at": now,
            "updated_at": now,
        }
        for index in range(3)
    ]


def stored(database: Database, prefix: str) -> list[tuple[object, ...]]:
    """The rows as the database holds them, as text: a timestamp written in another format
    would read back as the same datetime but sort differently in the claim's comparison."""
    columns = [getattr(Delivery, name) for name in COLUMNS if name != "workspace_id"]
    with database.session() as session:
        rows = session.execute(
            select(*(cast(column, Text) for column in columns), cast(DeliveryContent.headers, Text))
            .join(DeliveryContent, DeliveryContent.delivery_id == Delivery.id)
            .where(Delivery.message_id.like(f"<{prefix}-%"))
            .order_by(Delivery.message_id)
        )
        return [tuple(row) for row in rows]


def contents_of(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [
        {"message_id": row["message_id"], "headers": {"X-Index": str(index), "X-Ü": "ü"}}
        for index, row in enumerate(rows)
    ]


def test_bulk_inserts_store_what_sqlalchemy_stores(database: Database) -> None:
    now = utcnow()
    with database.session() as session:
        workspace_id = create_workspace(session, "Acme", Plan.PREMIUM).workspace_id
    contents = Bulk(
        insert(DeliveryContent.__table__).from_select(
            ["delivery_id", "headers"],
            select(Delivery.id, bindparam("headers", type_=DeliveryContent.headers.type)).where(
                Delivery.message_id == bindparam("message_id")
            ),
        )
    )
    with database.session() as session:
        rows = outbox_rows(workspace_id, "orm", now)
        session.execute(insert(Delivery.__table__), rows)
        for content in contents_of(rows):
            delivery_id = session.scalar(
                select(Delivery.id).where(Delivery.message_id == content["message_id"])
            )
            session.execute(
                insert(DeliveryContent.__table__),
                [{"delivery_id": delivery_id, "headers": content["headers"]}],
            )
    with database.session() as session:
        rows = outbox_rows(workspace_id, "bulk", now)
        Bulk(insert(Delivery.__table__)).execute(session.connection(), rows)
        contents.execute(session.connection(), contents_of(rows))

    by_sqlalchemy, by_bulk = stored(database, "orm"), stored(database, "bulk")
    assert len(by_bulk) == 3
    assert [row[:4] + row[5:] for row in by_bulk] == [row[:4] + row[5:] for row in by_sqlalchemy]
    assert json.loads(str(by_bulk[0][-1])) == {"X-Index": "0", "X-Ü": "ü"}


def test_a_bulk_update_sets_per_row_values_and_keeps_the_statement_s_fixed_ones(
    database: Database,
) -> None:
    with database.session() as session:
        workspace_id = create_workspace(session, "Acme", Plan.PREMIUM).workspace_id
        rows = outbox_rows(workspace_id, "upd", utcnow())
        session.execute(insert(Delivery.__table__), rows)
        ids = list(session.scalars(select(Delivery.id).order_by(Delivery.id)))
    sent_at = utcnow()
    mark_sent = Bulk(
        update(Delivery.__table__)
        .where(
            Delivery.__table__.c.id == bindparam("row_id"),
            Delivery.__table__.c.status == Status.QUEUED,
        )
        .values(status=Status.SENT, smtp_response=bindparam("reply"), sent_at=bindparam("at"))
    )
    with database.session() as session:
        mark_sent.execute(
            session.connection(),
            [
                {"row_id": ids[0], "reply": "250 first", "at": sent_at},
                {"row_id": ids[1], "reply": "250 second", "at": sent_at},
            ],
        )
    with database.session() as session:
        result = session.execute(
            select(Delivery.status, Delivery.smtp_response, Delivery.sent_at).order_by(Delivery.id)
        )
        assert [tuple(row) for row in result] == [
            (Status.SENT, "250 first", sent_at),
            (Status.SENT, "250 second", sent_at),
            (Status.QUEUED, None, None),
        ]


def test_a_row_without_a_per_row_value_is_refused_naming_it(database: Database) -> None:
    """`attempts` and `updated_at` have Python-side defaults that a Bulk insert does not run:
    leaving one out is an error, not a NULL."""
    with database.session() as session:
        workspace_id = create_workspace(session, "Acme", Plan.PREMIUM).workspace_id
        row = outbox_rows(workspace_id, "missing", utcnow())[0]
        del row["attempts"]
        with pytest.raises(KeyError, match="attempts"):
            Bulk(insert(Delivery.__table__)).execute(session.connection(), [row])
