"""GET /metrics: outcome counters the worker feeds, queue gauges read at scrape time, the SMTP
latency histogram; one registry per app, and nothing secret or personal in it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

from fastapi.testclient import TestClient
from integration_helpers import add_local, queue
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from postyard.api.app import create_app
from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery
from postyard.delivery import outbox
from postyard.delivery.worker import Worker
from postyard.localsmtp import FaultScript, LocalSMTPServer
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

StartSmtp = Callable[..., LocalSMTPServer]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> tuple[str, Samples]:
    response = client.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def run_worker_once(database: Database, settings: Settings, client: TestClient) -> int:
    worker = Worker(database, settings, metrics=client.app.state.metrics)  # type: ignore[attr-defined]

    async def once() -> int:
        try:
            return await worker.run_once()
        finally:
            await worker.pools.close()

    return asyncio.run(once())


def test_outcomes_are_counted_by_server_and_campaign_type(
    api: TestClient, database: Database, settings: Settings, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp(
        "smtp-main",
        faults=FaultScript.reject_recipients(
            {
                "gone@example.com": "550 5.1.1 <gone@example.com>: no such user",
                "later@example.com": "451 4.3.0 try later",
            }
        ),
        auth=("mailer", "s3cret-password"),
    )
    server = add_local(api, smtp, username="mailer", password="s3cret-password")
    queue(api, "newsletter", to="one@example.com")
    queue(api, "newsletter", to="two@example.com")
    queue(api, "event_triggered", to="three@example.com")
    queue(api, "newsletter", to="gone@example.com")
    queue(api, "event_triggered", to="later@example.com")
    queue(api, "newsletter", to="blocked@example.com")
    with database.session() as session:  # listed after queueing: the worker suppresses it
        outbox.suppress(session, api.workspace_id, "blocked@example.com", "test")  # type: ignore[attr-defined]

    assert run_worker_once(database, settings, api) == 6
    assert len(smtp.messages) == 3

    text, samples = scrape(api)
    sid = str(server["id"])
    name = "postyard_deliveries_total"
    assert value(samples, name, outcome="sent", smtp_server=sid, campaign_type="newsletter") == 2
    assert (
        value(samples, name, outcome="sent", smtp_server=sid, campaign_type="event_triggered") == 1
    )
    assert value(samples, name, outcome="failed", smtp_server=sid, campaign_type="newsletter") == 1
    assert (
        value(samples, name, outcome="deferred", smtp_server=sid, campaign_type="event_triggered")
        == 1
    )
    assert (
        value(samples, name, outcome="suppressed", smtp_server="none", campaign_type="newsletter")
        == 1
    )
    # One observation per SMTP transaction (the suppressed message had none).
    assert value(samples, "postyard_smtp_transaction_seconds_count", smtp_server=sid) == 5
    assert value(samples, "postyard_smtp_transaction_seconds_sum", smtp_server=sid) > 0
    # The deferred message waits: it shows in the queue gauges.
    assert value(samples, "postyard_queue_depth", status="deferred") == 1
    assert value(samples, "postyard_queue_depth", status="queued") == 0
    assert value(samples, "postyard_queue_database_up") == 1

    for secret_or_personal in (
        "s3cret-password",
        "mailer",
        "example.com",
        "127.0.0.1",
        str(smtp.port),
        "smtp-main",
        api.api_key,  # type: ignore[attr-defined]
    ):
        assert secret_or_personal not in text


def test_queue_depth_and_oldest_age_are_read_from_the_database_at_each_scrape(
    api: TestClient, database: Database
) -> None:
    _, samples = scrape(api)
    assert value(samples, "postyard_queue_depth", status="queued") == 0
    assert value(samples, "postyard_queue_oldest_age_seconds") == 0

    ids = [queue(api, "newsletter", to=f"p{i}@example.com")["id"] for i in range(3)]
    with database.session() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == ids[0])
            .values(created_at=utcnow() - timedelta(hours=1))
        )
        session.execute(
            update(Delivery)
            .where(Delivery.id == ids[1])
            .values(status="sending", created_at=utcnow() - timedelta(days=1))
        )

    _, samples = scrape(api)
    assert value(samples, "postyard_queue_depth", status="queued") == 2
    assert value(samples, "postyard_queue_depth", status="sending") == 1
    assert value(samples, "postyard_queue_depth", status="deferred") == 0
    # The oldest *waiting* message: the one in flight does not count.
    assert 3590 < value(samples, "postyard_queue_oldest_age_seconds") < 3700


def test_each_app_has_its_own_registry(
    api: TestClient, settings: Settings, database: Database, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp("smtp-main")
    add_local(api, smtp)
    queue(api, "newsletter")
    assert run_worker_once(database, settings, api) == 1

    with TestClient(create_app(settings, database)) as other:
        _, theirs = scrape(other)
    _, ours = scrape(api)
    assert sum(v for (n, _), v in ours.items() if n == "postyard_deliveries_total") == 1
    assert not any(n == "postyard_deliveries_total" for n, _ in theirs)


def test_serve_shows_the_counters_of_the_worker_it_runs(
    settings: Settings, database: Database, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp("smtp-main")
    with database.session() as session:
        created = create_workspace(session, "Acme", Plan.PREMIUM)
    app = create_app(settings, database, run_worker=True)
    headers = {"Authorization": f"Bearer {created.api_key}"}
    with TestClient(app, headers=headers) as client:
        server = add_local(client, smtp)
        queue(client, "segment_triggered")
        smtp.wait_for(1)
        deadline = time.monotonic() + 10
        while True:  # the outcome is recorded just after the server accepts the message
            _, samples = scrape(client)
            sent = value(
                samples,
                "postyard_deliveries_total",
                outcome="sent",
                smtp_server=str(server["id"]),
                campaign_type="segment_triggered",
            )
            if sent == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert sent == 1
