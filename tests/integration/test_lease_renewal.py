"""A batch slower than its lease: outcomes are recorded as the batch goes and the lease of the
rows still in flight is renewed, so a second worker never claims them and sends them again;
a worker that lost a lease all the same does not start those messages."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi.testclient import TestClient
from integration_helpers import add_server, queue
from sqlalchemy import select, update

from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery
from postyard.delivery.outbox import Outcome
from postyard.delivery.policy import Status
from postyard.delivery.worker import Attempt, Worker, _Batch
from postyard.localsmtp import free_port

DATA_SECONDS = 0.4
MESSAGES = 16
LEASE_SECONDS = 2.0
"""Long enough that a pause of the whole test process (a garbage collection on a loaded
machine) cannot outlast it between two renewals; the batch still outlives it three times."""

ApiFactory = Callable[..., TestClient]


class SlowSink:
    """An SMTP server that takes DATA_SECONDS to accept each DATA; it records Message-IDs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.started = threading.Event()  # a DATA has begun
        self._lock = threading.Lock()
        self._message_ids: list[str] = []
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, server_hostname="slow.localsmtp.invalid"
        )

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.started.set()
        await asyncio.sleep(DATA_SECONDS)
        content = (envelope.original_content or b"").decode("ascii", "replace")
        [message_id] = [
            line.split(":", 1)[1].strip()
            for line in content.splitlines()
            if line.lower().startswith("message-id:")
        ]
        with self._lock:
            self._message_ids.append(message_id)
        return "250 OK"

    def received(self) -> list[str]:
        with self._lock:
            return list(self._message_ids)


@pytest.fixture
def sink() -> Iterator[SlowSink]:
    server = SlowSink()
    server._controller.start()
    yield server
    server._controller.stop()


@pytest.fixture
def slow_settings(settings: Settings) -> Settings:
    return Settings(
        **{**settings.__dict__, "lease_seconds": LEASE_SECONDS, "worker_poll_seconds": 0.05}
    )


def prepare(make_api: ApiFactory, sink: SlowSink, messages: int = MESSAGES) -> None:
    api = make_api("premium")
    add_server(api, "slow", sink.port, max_connections=1)
    for i in range(messages):
        queue(api, "newsletter", to=f"reader{i}@example.com")


def rows(database: Database) -> list[Delivery]:
    with database.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def test_a_batch_slower_than_its_lease_is_sent_once_while_another_worker_claims(
    make_api: ApiFactory, database: Database, slow_settings: Settings, sink: SlowSink
) -> None:
    prepare(make_api, sink)
    first = Worker(database, slow_settings)
    second = Worker(database, slow_settings)
    seen_mid_batch: list[Counter[str]] = []

    async def run() -> float:
        stop = asyncio.Event()
        began = time.monotonic()
        workers = [asyncio.create_task(w.run(stop)) for w in (first, second)]
        try:
            deadline = began + MESSAGES * DATA_SECONDS + 15
            while time.monotonic() < deadline:
                statuses = Counter(row.status for row in await asyncio.to_thread(rows, database))
                if statuses["sending"] and statuses["sent"]:
                    seen_mid_batch.append(statuses)
                if statuses == Counter(sent=MESSAGES):
                    break
                await asyncio.sleep(0.1)
            return time.monotonic() - began
        finally:
            stop.set()
            await asyncio.gather(*workers)

    took = asyncio.run(run())

    assert took > 3 * LEASE_SECONDS, "the batch must outlive its lease for the test to mean much"
    received = sink.received()
    assert len(received) == MESSAGES, Counter(received).most_common(3)
    final = rows(database)
    assert {row.message_id for row in final} == set(received)
    assert [(row.status, row.attempts, row.lease_owner) for row in final] == [
        ("sent", 1, None)
    ] * MESSAGES
    # Outcomes were written while the rest of the batch was still in flight.
    assert seen_mid_batch, "no outcome was recorded before the batch ended"


def test_a_worker_that_lost_its_lease_does_not_start_those_messages(
    make_api: ApiFactory, database: Database, settings: Settings, sink: SlowSink
) -> None:
    messages = 5
    prepare(make_api, sink, messages)
    worker = Worker(database, Settings(**{**settings.__dict__, "lease_seconds": 3.0}))

    def steal() -> None:
        """Another worker takes every row this one holds (as if its lease had run out)."""
        with database.session() as session:
            session.execute(
                update(Delivery)
                .where(Delivery.lease_owner == worker.owner)
                .values(lease_owner="thief")
                .execution_options(synchronize_session=False)
            )

    async def run() -> int:
        task = asyncio.create_task(worker.run_once())
        try:
            while not sink.started.is_set():
                await asyncio.sleep(0.01)
            await asyncio.to_thread(steal)
            return await task
        finally:
            await worker.pools.close()

    assert asyncio.run(run()) == messages
    # The one under way when the rows were taken, and any begun before the next renewal
    # (a second at most), went out; the rest were left to the thief.
    assert 1 <= len(sink.received()) < messages
    final = rows(database)
    assert [(row.status, row.lease_owner) for row in final] == [("sending", "thief")] * messages


def test_a_flush_does_not_take_a_message_it_records_for_one_whose_lease_was_lost(
    make_api: ApiFactory,
    database: Database,
    settings: Settings,
    sink: SlowSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message can end just before a flush runs, while the batch still counts it as in
    flight (its done callback has not run yet): that flush records it and must not then
    find its lease "lost" because the row it has just written is no longer `sending`."""
    prepare(make_api, sink, 2)
    worker = Worker(database, settings)

    async def run() -> set[int]:
        [finished, unfinished] = await worker._claim()
        now = utcnow()
        outcome = Outcome(finished.id, Status.SENT, now, smtp_response="250 OK", sent_at=now)
        ended = asyncio.create_task(asyncio.sleep(0, Attempt(finished, outcome)))
        under_way = asyncio.create_task(asyncio.sleep(60, Attempt(unfinished, outcome)))
        await asyncio.sleep(0.01)
        batch = _Batch({ended: finished, under_way: unfinished}, flush_at=0)
        try:
            await worker._flush(batch, {ended, under_way})
        finally:
            under_way.cancel()
        return batch.lost

    with caplog.at_level(logging.WARNING, logger="postyard.delivery.worker"):
        lost = asyncio.run(run())
    assert lost == set()
    assert "lost the lease" not in caplog.text
    assert [(row.status, row.lease_owner) for row in rows(database)] == [
        ("sent", None),
        ("sending", worker.owner),
    ]
