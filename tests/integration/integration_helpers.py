"""Plain helpers shared by the integration tests: configure through the REST API, drive the
real worker, and read what each SMTP server actually received."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.testclient import TestClient

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.delivery.worker import Worker
from postyard.localsmtp import LocalSMTPServer

FROM = "Acme <news@acme.example>"
TO = "reader@example.com"
CAMPAIGN_TYPES = ("segment_triggered", "event_triggered", "newsletter", "triggered_broadcast")


def add_server(
    api: TestClient,
    name: str,
    port: int,
    *,
    role: str | None = None,
    security: str = "none",
    **fields: Any,
) -> dict[str, Any]:
    """POST /v1/smtp_servers for a server on 127.0.0.1; fails the test unless it is created."""
    body: dict[str, Any] = {
        "name": name,
        "host": "127.0.0.1",
        "port": port,
        "security": security,
        **fields,
    }
    if role is not None:
        body["role"] = role
    response = api.post("/v1/smtp_servers", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def add_local(
    api: TestClient, smtp: LocalSMTPServer, *, role: str | None = None, **fields: Any
) -> dict[str, Any]:
    """Configure a running LocalSMTPServer under its own name."""
    return add_server(api, smtp.name, smtp.port, role=role, **fields)


def set_role(api: TestClient, server_id: int, role: str) -> dict[str, Any]:
    response = api.patch(f"/v1/smtp_servers/{server_id}", json={"role": role})
    assert response.status_code == 200, response.text
    return response.json()


def queue(
    api: TestClient,
    campaign_type: str,
    *,
    to: str = TO,
    subject: str | None = None,
    text: str = "Hello from the integration tests.",
    **fields: Any,
) -> dict[str, Any]:
    """POST /v1/test_messages; the subject defaults to the campaign type, to tell them apart."""
    response = api.post(
        "/v1/test_messages",
        json={
            "campaign_type": campaign_type,
            "to": to,
            "from": FROM,
            "subject": subject or campaign_type,
            "text": text,
            **fields,
        },
    )
    assert response.status_code == 202, response.text
    return response.json()


def delivery(api: TestClient, delivery_id: int) -> dict[str, Any]:
    response = api.get(f"/v1/deliveries/{delivery_id}")
    assert response.status_code == 200, response.text
    return response.json()


def subjects(smtp: LocalSMTPServer) -> list[str]:
    """The subjects a server accepted, sorted, so tests compare sets of campaign types."""
    return sorted(message.subject or "" for message in smtp.messages)


def run_once(database: Database, settings: Settings, **overrides: Any) -> int:
    """One claim-send-record round of a new real worker; returns how many deliveries it took.

    For outcomes that `deliver` would wait on forever (a message deferred again and again).
    """
    return run_round(Worker(database, Settings(**{**settings.__dict__, **overrides})))


def run_round(worker: Worker) -> int:
    """One claim-send-record round of `worker`, which keeps its own memory (servers marked
    down) between rounds. Each round has an event loop of its own, so its connections are
    closed before the loop ends."""

    async def once() -> int:
        try:
            return await worker.run_once()
        finally:
            await worker.pools.close()

    return asyncio.run(once())
