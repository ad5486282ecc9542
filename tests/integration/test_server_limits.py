"""A server's limits hold across workers: several workers (each its own owner, its own event
loop, sharing only the database, as separate processes do) send to one real SMTP server
that records how the mail arrived. Both backends: on SQLite the same code must work."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from integration_helpers import add_server
from recording_smtp import RecordingSMTPServer, busiest_second, observed_rate
from sqlalchemy import func, select

from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery, ServerSlot
from postyard.delivery import throttle
from postyard.delivery.outbox import Letter, enqueue_many
from postyard.delivery.throttle import Throttle
from postyard.delivery.worker import Worker

WORKERS = 4


@pytest.fixture
def smtp() -> Iterator[RecordingSMTPServer]:
    with RecordingSMTPServer() as server:
        yield server


def queue_messages(database: Database, workspace_id: int, count: int) -> set[str]:
    """`count` newsletters queued at once; returns their Message-IDs."""
    letters = [
        Letter("newsletter", f"reader{n}@example.com", "news@acme.example", f"News {n}", "Hi")
        for n in range(count)
    ]
    with database.session() as session:
        ids = enqueue_many(session, workspace_id, letters, utcnow(), timedelta(days=1))
        return set(session.scalars(select(Delivery.message_id).where(Delivery.id.in_(ids))))


def run_workers(database: Database, settings: Settings, count: int = WORKERS) -> None:
    """`count` workers side by side, each in a thread with its own event loop, until the
    outbox is empty; small batches, so that every worker gets a share of the mail."""
    worker_settings = Settings(**{**settings.__dict__, "worker_batch_size": 20})
    errors: list[BaseException] = []

    def work() -> None:
        try:
            asyncio.run(Worker(database, worker_settings).drain(timeout=60))
        except BaseException as error:  # reported by the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def statuses(database: Database) -> dict[str, int]:
    with database.session() as session:
        return dict(
            session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
        )


def assert_each_delivered_once(
    database: Database, smtp: RecordingSMTPServer, message_ids: set[str]
) -> None:
    received = [arrival.message_id for arrival in smtp.arrivals]
    assert len(received) == len(message_ids)
    assert set(received) == message_ids
    assert statuses(database) == {"sent": len(message_ids)}


def configure(api: TestClient, smtp: RecordingSMTPServer, **limits: Any) -> dict[str, Any]:
    return add_server(api, "limited", smtp.port, **limits)


def test_rate_limit_holds_across_workers_within_ten_percent(
    api: TestClient, database: Database, settings: Settings, smtp: RecordingSMTPServer
) -> None:
    rate = 40.0
    configure(api, smtp, rate_limit_per_second=rate, max_connections=4)
    message_ids = queue_messages(database, api.workspace_id, 160)  # type: ignore[attr-defined]

    run_workers(database, settings, count=2)

    assert_each_delivered_once(database, smtp, message_ids)
    assert observed_rate(smtp.arrivals) == pytest.approx(rate, rel=0.10)
    assert busiest_second(smtp.arrivals) <= rate * 1.2


def test_max_connections_hold_across_workers(
    api: TestClient, database: Database, settings: Settings, smtp: RecordingSMTPServer
) -> None:
    configure(api, smtp, max_connections=2)
    message_ids = queue_messages(database, api.workspace_id, 300)  # type: ignore[attr-defined]

    run_workers(database, settings)

    assert_each_delivered_once(database, smtp, message_ids)
    assert smtp.most_open <= 2
    with database.session() as session:  # every slot was given back
        assert (
            session.scalars(select(ServerSlot.owner).where(ServerSlot.owner.is_not(None))).all()
            == []
        )


def test_a_connection_quits_after_max_messages_and_a_new_one_takes_over(
    api: TestClient, database: Database, settings: Settings, smtp: RecordingSMTPServer
) -> None:
    per_connection, count = 7, 100
    configure(api, smtp, max_messages_per_connection=per_connection, max_connections=2)
    message_ids = queue_messages(database, api.workspace_id, count)  # type: ignore[attr-defined]

    run_workers(database, settings, count=2)

    assert_each_delivered_once(database, smtp, message_ids)
    carried = smtp.messages_per_connection()
    assert max(carried.values()) <= per_connection
    assert smtp.connections >= math.ceil(count / per_connection)


def test_slots_of_a_worker_that_died_are_taken_again_once_their_lease_expires(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(throttle, "SLOT_LEASE_SECONDS", 0.5)
    server_id, limit = 7, 2

    async def scenario() -> tuple[list[int | None], int | None, float]:
        dead = Throttle(database, "dead-worker")
        held = [await dead.try_slot(server_id, limit) for _ in range(limit)]
        # The dead worker never renews nor releases its slots.
        assert dead._renewal is not None
        dead._renewal.cancel()
        alive = Throttle(database, "live-worker")
        loop = asyncio.get_running_loop()
        began = loop.time()
        slot = await alive.try_slot(server_id, limit)
        while slot is None and loop.time() - began < 10:
            await asyncio.sleep(0.05)
            slot = await alive.try_slot(server_id, limit)
        waited = loop.time() - began
        await alive.close()
        return held, slot, waited

    held, slot, waited = asyncio.run(scenario())
    assert sorted(held) == [0, 1]
    assert slot in held
    assert waited >= 0.3  # not before the lease ran out
