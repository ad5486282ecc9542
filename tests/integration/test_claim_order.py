"""A claim takes the deliveries a dead worker held before the queued backlog, on both
backends: by `next_attempt_at` alone an expired lease sorts after every older queued row, so
the messages in flight at a crash would wait behind everything else. Due retries come next,
then new mail, oldest first within each."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

from postyard.clock import utcnow
from postyard.db.engine import Database
from postyard.db.models import Delivery
from postyard.delivery import outbox
from postyard.delivery.outbox import Letter
from postyard.delivery.policy import Status
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

LIFETIME = timedelta(days=3)


def queue(database: Database, workspace_id: int, count: int, now: datetime) -> list[int]:
    letters = [
        Letter("newsletter", f"reader-{index}@example.com", "news@acme.example", "Hi", "Hello")
        for index in range(count)
    ]
    with database.session() as session:
        return outbox.enqueue_many(session, workspace_id, letters, now, LIFETIME)


def claim(database: Database, owner: str, limit: int, now: datetime, lease: timedelta) -> set[int]:
    with database.session() as session:
        return {row.id for row in outbox.claim(session, owner, limit, now, lease)}


def crashed_in_flight(database: Database, now: datetime) -> tuple[set[int], list[int]]:
    """Three messages a dead worker leased until ten minutes ago, and a backlog of five
    queued an hour ago: older, by `next_attempt_at`, than the expired leases."""
    with database.session() as session:
        workspace_id = create_workspace(session, "Acme", Plan.PREMIUM).workspace_id
    in_flight = set(queue(database, workspace_id, 3, now - timedelta(hours=3)))
    backlog = queue(database, workspace_id, 5, now - timedelta(hours=1))
    lease = timedelta(hours=2, minutes=50)
    assert claim(database, "dead-worker", 10, now - timedelta(hours=3), lease) == in_flight
    return in_flight, backlog


def test_expired_leases_are_claimed_before_an_older_queued_backlog(database: Database) -> None:
    now = utcnow()
    in_flight, backlog = crashed_in_flight(database, now)

    assert claim(database, "w2", 3, now, timedelta(minutes=1)) == in_flight
    with database.session() as session:
        rows = session.scalars(select(Delivery).where(Delivery.id.in_(in_flight)))
        assert {(r.status, r.lease_owner, r.attempts) for r in rows} == {(Status.SENDING, "w2", 2)}
        waiting = session.scalars(select(Delivery.status).where(Delivery.id.in_(backlog)))
        assert set(waiting) == {Status.QUEUED}


def test_a_claim_fills_up_with_the_backlog_after_the_expired_leases(database: Database) -> None:
    now = utcnow()
    in_flight, backlog = crashed_in_flight(database, now)

    taken = claim(database, "w2", 5, now, timedelta(minutes=1))

    assert in_flight < taken
    assert len(taken - in_flight) == 2 and taken - in_flight <= set(backlog)
    assert claim(database, "w3", 10, now, timedelta(minutes=1)) == set(backlog) - taken


def test_due_retries_are_claimed_before_new_mail_and_each_oldest_first(
    database: Database,
) -> None:
    now = utcnow()
    with database.session() as session:
        workspace_id = create_workspace(session, "Acme", Plan.PREMIUM).workspace_id
    new_mail = [queue(database, workspace_id, 1, now - timedelta(hours=h))[0] for h in (2, 1)]
    retries = queue(database, workspace_id, 2, now - timedelta(hours=3))
    with database.session() as session:
        for minutes, delivery_id in zip((20, 10), retries, strict=True):
            session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(status=Status.DEFERRED, next_attempt_at=now - timedelta(minutes=minutes))
            )
    queue(database, workspace_id, 1, now + timedelta(minutes=5))  # not due yet

    one_at_a_time = [claim(database, "w", 1, now, timedelta(minutes=1)) for _ in range(5)]

    assert one_at_a_time == [{retries[0]}, {retries[1]}, {new_mail[0]}, {new_mail[1]}, set()]
