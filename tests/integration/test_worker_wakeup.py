"""Wake-ups in `postyard serve`: mail the process queues itself (API requests, triggers, jobs)
wakes the delivery worker at once instead of waiting out its idle poll; mail queued by other
processes is still found by the poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from integration_helpers import FROM, add_local, queue

from postyard.api.app import create_app
from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.delivery import outbox
from postyard.delivery.outbox import Letter
from postyard.localsmtp import LocalSMTPServer
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

StartSmtp = Callable[..., LocalSMTPServer]
LONG_POLL = 30.0
"""Far longer than any test waits: a message that arrives was not found by the poll."""


def serve(settings: Settings, database: Database, **overrides: Any) -> TestClient:
    """`postyard serve` in this process: the API with its worker and jobs, for a new workspace."""
    with database.session() as session:
        created = create_workspace(session, "Acme", Plan.PREMIUM)
    app = create_app(Settings(**{**settings.__dict__, **overrides}), database, run_worker=True)
    client = TestClient(app, headers={"Authorization": f"Bearer {created.api_key}"})
    client.workspace_id = created.workspace_id  # type: ignore[attr-defined]
    return client


def letter(to: str = "reader@example.com", **fields: Any) -> Letter:
    return Letter("newsletter", to, FROM, "Hello", text_body="Hi.", **fields)


def test_mail_queued_through_the_api_is_sent_without_waiting_out_the_poll(
    settings: Settings, database: Database, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp()
    with serve(settings, database, worker_poll_seconds=LONG_POLL) as api:
        add_local(api, smtp)
        time.sleep(0.3)  # the worker has found nothing to do and settled into its idle wait
        for count in (1, 2, 3):
            began = time.monotonic()
            queue(api, "newsletter", to=f"reader{count}@example.com")
            smtp.wait_for(count, timeout=5)
            assert time.monotonic() - began < 5
            time.sleep(0.1)  # idle again before the next one


def test_mail_an_event_triggers_is_sent_without_waiting_out_the_poll(
    settings: Settings, database: Database, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp()
    with serve(settings, database, worker_poll_seconds=LONG_POLL) as api:
        add_local(api, smtp)
        response = api.post(
            "/v1/campaigns",
            json={
                "name": "welcome",
                "type": "event_triggered",
                "trigger": {"event_name": "signed_up"},
                "state": "active",
                "message": {"from": FROM, "subject": "Welcome", "text": "Hello."},
            },
        )
        assert response.status_code == 201, response.text
        assert api.put("/v1/people/ann", json={"email": "ann@example.com"}).status_code in {
            200,
            201,
        }
        time.sleep(0.3)
        response = api.post("/v1/people/ann/events", json={"name": "signed_up"})
        assert response.status_code in {200, 201, 202}, response.text
        [message] = smtp.wait_for(1, timeout=5)
    assert message.subject == "Welcome"


def test_mail_queued_by_another_process_is_found_by_the_poll(
    settings: Settings, database: Database, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp()
    with serve(settings, database, worker_poll_seconds=0.3) as api:
        add_local(api, smtp)
        workspace_id = api.workspace_id  # type: ignore[attr-defined]
        other = Database(settings.database_url)  # another engine: no wake-up reaches the worker
        try:
            time.sleep(0.5)
            with other.session() as session:
                outbox.enqueue(session, workspace_id, letter(), utcnow(), timedelta(days=1))
            smtp.wait_for(1, timeout=5)
        finally:
            other.dispose()


def test_a_commit_that_queued_mail_calls_the_engines_callbacks_once(
    database: Database, workspace_id: int
) -> None:
    calls: list[str] = []
    forget = outbox.when_due(database.engine, lambda: calls.append("woken"))
    other = Database(database.url)
    forget_other = outbox.when_due(other.engine, lambda: calls.append("other engine"))
    now, lifetime = utcnow(), timedelta(days=1)
    try:
        with database.session() as session:
            outbox.enqueue_many(
                session, workspace_id, [letter(), letter("b@example.com")], now, lifetime
            )
            outbox.enqueue(session, workspace_id, letter("c@example.com"), now, lifetime)
            assert calls == [], "not before the commit"
        assert calls == ["woken"]

        with pytest.raises(RuntimeError), database.session() as session:
            outbox.enqueue(session, workspace_id, letter(), now, lifetime)
            raise RuntimeError("rolled back")
        with database.session() as session:  # the same kind of session, nothing queued
            session.info.clear()
        assert calls == ["woken"], "a rollback wakes nobody, nor does a later commit"

        with database.session() as session:  # nothing to deliver: recorded as suppressed
            outbox.enqueue(
                session, workspace_id, letter(suppressed_because="unsubscribed"), now, lifetime
            )
        assert calls == ["woken"]

        forget()
        with database.session() as session:
            outbox.enqueue(session, workspace_id, letter(), now, lifetime)
        assert calls == ["woken"]
    finally:
        forget()
        forget_other()
        other.dispose()


def test_a_failing_callback_does_not_fail_the_commit(database: Database, workspace_id: int) -> None:
    def broken() -> None:
        raise RuntimeError("callback failed")

    forget = outbox.when_due(database.engine, broken)
    try:
        with database.session() as session:
            [delivery_id] = outbox.enqueue_many(
                session, workspace_id, [letter()], utcnow(), timedelta(days=1)
            )
        with database.session() as session:
            assert session.get(outbox.Delivery, delivery_id) is not None
    finally:
        forget()
