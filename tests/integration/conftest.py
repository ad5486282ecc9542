"""Fixtures for integration tests: real SMTP servers, and API clients with their own settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.localsmtp import LocalSMTPServer
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

SmtpFactory = Callable[..., LocalSMTPServer]
ApiWithSettings = Callable[..., TestClient]


@pytest.fixture
def workspace_id(database: Database) -> int:
    """A premium workspace of the test's own, made through the service layer."""
    with database.session() as session:
        return create_workspace(session, "Acme", Plan.PREMIUM).workspace_id


@pytest.fixture
def start_smtp() -> Iterator[SmtpFactory]:
    """`start_smtp(name, **LocalSMTPServer options)`: a running server, stopped after the test."""
    started: list[LocalSMTPServer] = []

    def start(name: str = "smtp", **options: object) -> LocalSMTPServer:
        server = LocalSMTPServer(name=name, **options)  # type: ignore[arg-type]
        started.append(server)
        server.start()
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def make_api_with(settings: Settings, database: Database) -> Iterator[ApiWithSettings]:
    """`make_api_with(**settings_overrides)`: a premium workspace behind an app whose settings
    differ from the shared ones (the API fixes a message's lifetime when it queues it)."""
    clients: list[TestClient] = []

    def make(plan: str = "premium", **overrides: object) -> TestClient:
        app_settings = Settings(**{**settings.__dict__, **overrides})
        with database.session() as session:
            created = create_workspace(session, "Acme", Plan(plan))
        client = TestClient(
            create_app(app_settings, database),
            headers={"Authorization": f"Bearer {created.api_key}"},
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
