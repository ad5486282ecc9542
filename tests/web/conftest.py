"""Web UI tests without a browser: the pages over HTTP on SQLite and PostgreSQL.

Like the API tests, they share one database per module and backend; each test
acts in fresh workspaces of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def database_url(module_database_url: str) -> str:
    """Web tests act only in fresh workspaces of their own: one database per module."""
    return module_database_url


class Browserless(TestClient):
    """A client that signs in through the form, as a person does, and knows its CSRF token."""

    workspace_id: int
    api_key: str
    csrf: str

    def sign_in(self) -> None:
        page = self.get("/login")
        response = self.post(
            "/login",
            data={"csrf_token": CSRF.search(page.text)[1], "api_key": self.api_key, "next": ""},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        self.csrf = CSRF.search(self.get("/overview").text)[1]

    def submit(self, path: str, **fields: str) -> httpx.Response:
        return self.post(path, data={"csrf_token": self.csrf, **fields}, follow_redirects=False)


WebFactory = Callable[..., Browserless]


@pytest.fixture
def make_web(settings: Settings, database: Database) -> Iterator[WebFactory]:
    """`make_web(plan=..., signed_in=True)`: a new workspace and a client of its own."""
    app = create_app(settings, database)
    clients: list[Browserless] = []

    def make(
        plan: str = "premium", *, signed_in: bool = True, base_url: str = "http://testserver"
    ) -> Browserless:
        with database.session() as session:
            created = create_workspace(session, "Acme", Plan(plan))
        client = Browserless(app, base_url=base_url)
        client.workspace_id = created.workspace_id
        client.api_key = created.api_key
        clients.append(client)
        if signed_in:
            client.sign_in()
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def web(make_web: WebFactory) -> Browserless:
    return make_web()
