"""Delivery semantics (DESIGN §5) against real SMTP servers: retries, outages, bounces,
suppression, lifetime, Message-ID stability and lease expiry."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from email.parser import BytesParser
from email.policy import default as default_policy

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi.testclient import TestClient
from integration_helpers import TO, add_local, add_server, delivery, queue, run_once
from sqlalchemy import select

from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Suppression
from postyard.delivery import outbox
from postyard.delivery.outbox import Outcome
from postyard.delivery.policy import Status
from postyard.localsmtp import FaultScript, LocalSMTPServer, free_port

Deliver = Callable[..., None]
StartSmtp = Callable[..., LocalSMTPServer]
ApiWithSettings = Callable[..., TestClient]


def suppressed_addresses(database: Database, workspace_id: int) -> list[str]:
    with database.session() as session:
        return list(
            session.scalars(
                select(Suppression.email).where(Suppression.workspace_id == workspace_id)
            )
        )


@pytest.mark.parametrize("stage", ["DATA", "RCPT"])
def test_temporary_failure_is_retried_and_sent_on_the_second_attempt(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp, stage: str
) -> None:
    smtp = start_smtp(
        "smtp-main", faults=FaultScript.reply_then_accept("451 4.3.0 Try again later", 1, at=stage)
    )
    server = add_local(api, smtp)
    delivery_id = queue(api, "newsletter")["id"]

    deliver()

    record = delivery(api, delivery_id)
    assert record["status"] == "sent", record
    assert record["attempts"] == 2
    assert record["smtp_server_id"] == server["id"]
    assert record["smtp_response"].startswith("250")
    assert record["last_error"] is None
    assert smtp.rejected == 1
    assert len(smtp.messages) == 1


def test_server_down_defers_with_the_connection_error_then_delivers_once_it_listens(
    api: TestClient,
    deliver: Deliver,
    start_smtp: StartSmtp,
    database: Database,
    settings: Settings,
) -> None:
    port = free_port()
    server = add_server(api, "smtp-down", port)
    delivery_id = queue(api, "event_triggered")["id"]

    assert run_once(database, settings) == 1
    deferred = delivery(api, delivery_id)
    assert deferred["status"] == "deferred", deferred
    assert deferred["attempts"] == 1
    assert deferred["smtp_server_id"] == server["id"]
    assert deferred["smtp_response"] is None
    assert "cannot connect to smtp-down" in deferred["last_error"]
    assert f"127.0.0.1:{port}" in deferred["last_error"]
    assert deferred["next_attempt_at"] is not None

    smtp = start_smtp("smtp-down", port=port)
    deliver()

    record = delivery(api, delivery_id)
    assert record["status"] == "sent", record
    assert record["attempts"] == 2
    assert [m.subject for m in smtp.messages] == ["event_triggered"]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (into the backlog) but never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


def test_server_that_never_answers_times_out_and_the_message_is_deferred(
    api: TestClient, database: Database, settings: Settings, silent_port: int
) -> None:
    server = add_server(api, "smtp-silent", silent_port)
    delivery_id = queue(api, "newsletter")["id"]

    started = time.monotonic()
    assert run_once(database, settings, smtp_timeout_seconds=0.3) == 1
    assert time.monotonic() - started < 3

    record = delivery(api, delivery_id)
    assert record["status"] == "deferred", record
    assert record["smtp_server_id"] == server["id"]
    assert "cannot connect to smtp-silent" in record["last_error"]
    assert "timed out" in record["last_error"].lower()


def test_server_that_stops_and_restarts_loses_no_message(
    api: TestClient,
    deliver: Deliver,
    start_smtp: StartSmtp,
    database: Database,
    settings: Settings,
) -> None:
    smtp = start_smtp("smtp-main")
    add_local(api, smtp)
    first = queue(api, "newsletter", subject="before the outage")["id"]
    deliver()
    smtp.stop()

    second = queue(api, "newsletter", subject="during the outage")["id"]
    assert run_once(database, settings) == 1
    assert delivery(api, second)["status"] == "deferred"

    smtp.start()
    deliver()

    assert delivery(api, first)["attempts"] == 1
    assert delivery(api, second)["status"] == "sent"
    assert [m.subject for m in smtp.messages] == ["before the outage", "during the outage"]


def test_hard_bounce_fails_the_message_and_suppresses_the_address_for_later_messages(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp, database: Database
) -> None:
    gone = "gone@example.com"
    smtp = start_smtp(
        "smtp-main",
        faults=FaultScript.reject_recipients({gone: "550 5.1.1 No such user here"}),
    )
    add_local(api, smtp)
    bounced = queue(api, "newsletter", to=gone)["id"]
    fine = queue(api, "newsletter", to=TO)["id"]
    queued_before_the_bounce = queue(api, "segment_triggered", to=gone.upper())["id"]

    deliver(worker_batch_size=1)  # one at a time: the bounce is recorded before the next send

    record = delivery(api, bounced)
    assert record["status"] == "failed", record
    assert record["attempts"] == 1
    assert record["smtp_response"] == "550 5.1.1 No such user here"
    assert delivery(api, fine)["status"] == "sent"
    assert suppressed_addresses(database, api.workspace_id) == [gone]  # type: ignore[attr-defined]
    assert delivery(api, queued_before_the_bounce)["status"] == "suppressed"
    assert smtp.rejected == 1

    later = queue(api, "event_triggered", to=gone)
    assert later["status"] == "suppressed"
    deliver()
    assert delivery(api, later["id"])["status"] == "suppressed"
    assert [m.rcpt_tos for m in smtp.messages] == [(TO,)]


def test_an_address_smtp_cannot_carry_fails_that_message_and_the_rest_are_sent(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    """A non-ASCII address would need SMTPUTF8: that message fails with the reason, and the
    worker carries on with the others instead of stopping on it."""
    smtp = start_smtp("smtp-main")
    add_local(api, smtp)
    response = api.post(
        "/v1/test_messages",
        json={
            "campaign_type": "newsletter",
            "to": "jörg@example.com",
            "from": "news@acme.example",
            "subject": "Hallo",
            "text": "Hallo.",
        },
    )
    assert response.status_code == 202, response.text
    unsendable = response.json()["id"]
    fine = queue(api, "newsletter")["id"]

    deliver()

    record = delivery(api, unsendable)
    assert record["status"] == "failed", record
    assert record["last_error"].startswith("invalid_address: "), record
    assert "SMTPUTF8" in record["last_error"]
    assert delivery(api, fine)["status"] == "sent"
    assert [m.rcpt_tos for m in smtp.messages] == [(TO,)]


def test_policy_rejection_fails_the_message_without_suppressing_the_address(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp, database: Database
) -> None:
    smtp = start_smtp(
        "smtp-main",
        faults=FaultScript.reply_then_accept("550 5.7.1 Message refused by policy", 1),
    )
    add_local(api, smtp)
    refused = queue(api, "newsletter")["id"]

    deliver()

    record = delivery(api, refused)
    assert record["status"] == "failed", record
    assert record["attempts"] == 1
    assert record["smtp_response"] == "550 5.7.1 Message refused by policy"
    assert suppressed_addresses(database, api.workspace_id) == []  # type: ignore[attr-defined]

    later = queue(api, "newsletter")
    assert later["status"] == "queued"
    deliver()
    assert delivery(api, later["id"])["status"] == "sent"
    assert len(smtp.messages) == 1


def test_message_deferred_past_its_lifetime_fails_with_lifetime_exceeded(
    make_api_with: ApiWithSettings, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    # Long enough for a second attempt (retries come every 0.05 to 0.2 s) on a busy machine.
    api = make_api_with(message_lifetime_seconds=1.5)
    smtp = start_smtp("smtp-main", faults=FaultScript.always("451 4.3.0 Try again later"))
    add_local(api, smtp)
    delivery_id = queue(api, "newsletter")["id"]

    deliver(message_lifetime_seconds=1.5)

    record = delivery(api, delivery_id)
    assert record["status"] == "failed", record
    assert "lifetime exceeded" in record["last_error"]
    assert "451 4.3.0 Try again later" in record["last_error"]
    assert record["attempts"] >= 2
    assert smtp.rejected == record["attempts"]
    assert smtp.messages == []


class AcceptThenDefer:
    """An aiosmtpd handler that keeps every DATA it is sent yet answers 451 to the first ones:
    the client cannot tell its message arrived, as when a connection drops after the final dot.
    """

    def __init__(self, defer: int) -> None:
        self.defer = defer
        self.received: list[bytes] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.received.append(bytes(envelope.original_content or b""))
            if len(self.received) <= self.defer:
                return "451 4.4.2 Connection dropped, try again"
        return "250 OK"


@pytest.fixture
def accept_then_defer() -> Iterator[tuple[AcceptThenDefer, int]]:
    handler = AcceptThenDefer(defer=2)
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(), server_hostname="defer.invalid"
    )
    controller.start()
    yield handler, controller.port
    controller.stop()


def test_message_id_is_the_same_on_every_attempt_and_matches_the_delivery(
    api: TestClient, deliver: Deliver, accept_then_defer: tuple[AcceptThenDefer, int]
) -> None:
    handler, port = accept_then_defer
    add_server(api, "smtp-flaky", port)
    queued = queue(api, "triggered_broadcast")

    deliver()

    record = delivery(api, queued["id"])
    assert record["status"] == "sent"
    assert record["attempts"] == 3
    assert len(handler.received) == 3
    message_ids = [
        BytesParser(policy=default_policy).parsebytes(data)["Message-ID"]
        for data in handler.received
    ]
    assert message_ids == [queued["message_id"]] * 3
    assert record["message_id"] == queued["message_id"]


def test_lease_of_a_dead_worker_expires_and_another_worker_delivers_the_message(
    api: TestClient,
    deliver: Deliver,
    start_smtp: StartSmtp,
    database: Database,
    settings: Settings,
) -> None:
    smtp = start_smtp("smtp-main")
    add_local(api, smtp)
    delivery_id = queue(api, "segment_triggered")["id"]
    lease = 3.0
    with database.session() as session:
        claimed = outbox.claim(session, "dead-worker", 10, utcnow(), timedelta(seconds=lease))
    claimed_at = time.monotonic()
    assert [c.id for c in claimed] == [delivery_id]

    # While the lease holds, no other worker takes the message.
    taken = run_once(database, settings)
    assert time.monotonic() - claimed_at < lease, "too slow to check within the lease; raise it"
    assert taken == 0
    held = delivery(api, delivery_id)
    assert held["status"] == "sending"
    assert held["attempts"] == 1

    deliver()

    record = delivery(api, delivery_id)
    assert record["status"] == "sent", record
    assert record["attempts"] == 2
    assert len(smtp.messages) == 1

    # The dead worker wakes up and reports: its lease is gone, so nothing changes.
    with database.session() as session:
        outbox.record(
            session,
            "dead-worker",
            [Outcome(delivery_id, Status.FAILED, utcnow(), last_error="late report")],
            utcnow(),
        )
    assert delivery(api, delivery_id)["status"] == "sent"
    assert delivery(api, delivery_id)["last_error"] is None
