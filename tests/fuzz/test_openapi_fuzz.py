"""Schemathesis against the OpenAPI document the app serves at `/openapi.json`.

With a valid admin key, every operation of the document is called with generated
input (valid and invalid): no answer is a 5xx, and every answer matches what the
document declares for it (status code, content type, headers, body schema). Without
a key, every operation answers 401 (or 404/405/422 for a path it cannot match) and
never a 2xx or a 5xx.

The web UI, the unsubscribe pages and `/metrics` are not in the document, so they are
not fuzzed here. The workspace is seeded with one object of each kind so that small
generated ids sometimes hit a real row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from hypothesis import settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
FROM = "Acme <news@acme.example>"
# Bounded for CI (per operation and backend); derandomized, so every run is the same.
WITH_KEY_EXAMPLES = 20
WITHOUT_KEY_EXAMPLES = 8


def served_document_app() -> Any:
    """The app as `postyard serve` builds it; serving its OpenAPI document touches no
    database, so the schema can be loaded at collection time, one test per operation."""
    return create_app(Settings(database_url="sqlite://", secret_key=Fernet.generate_key().decode()))


schema = schemathesis.openapi.from_asgi("/openapi.json", served_document_app())


@dataclasses.dataclass
class Target:
    app: Any
    api_key: str
    backend: str


def seed(client: TestClient) -> None:
    """One of each object, so that generated ids of 1 or 2 sometimes name a real row."""

    def ok(response: Any) -> Any:
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    ok(client.post("/v1/smtp_servers", json={"name": "main", "host": "127.0.0.1", "port": 9}))
    ok(client.put("/v1/people/1", json={"email": "ann@example.com", "plan": "pro"}))
    segment = ok(
        client.post(
            "/v1/segments",
            json={
                "name": "pro",
                "conditions": {"attribute": {"field": "plan", "operator": "eq", "value": "pro"}},
            },
        )
    )
    message = {"from": FROM, "subject": "Hi {{ customer.plan }}", "text": "Hello."}
    for campaign_type, extra in (
        ("newsletter", {"audience": {"all": True}}),
        ("triggered_broadcast", {"state": "active"}),
        ("event_triggered", {"trigger": {"event_name": "signed_up"}}),
        ("segment_triggered", {"trigger": {"segment_id": segment["id"]}}),
    ):
        ok(
            client.post(
                "/v1/campaigns",
                json={"name": campaign_type, "type": campaign_type, "message": message, **extra},
            )
        )
    ok(client.post("/v1/suppressions", json={"email": "gone@example.com"}))


@pytest.fixture(scope="module")
def database_url(module_database_url: str) -> str:
    """The fuzzing acts in workspaces of its own: one database per module and backend."""
    return module_database_url


@pytest.fixture
def target(settings: Settings, database: Database) -> Iterator[Target]:
    # Thousands of requests with one key must not meet the per-key rate limit, and a
    # connection test to a generated host must not hang the run.
    overrides: dict[str, Any] = {"smtp_timeout_seconds": 1.0}
    if any(f.name == "api_rate_limit_per_minute" for f in dataclasses.fields(Settings)):
        overrides["api_rate_limit_per_minute"] = 0
    app = create_app(dataclasses.replace(settings, **overrides), database)
    with database.session() as session:
        created = create_workspace(session, "fuzz", Plan.PREMIUM)
    with TestClient(app, headers={"Authorization": f"Bearer {created.api_key}"}) as client:
        seed(client)
    yield Target(app, created.api_key, database.engine.dialect.name)


@schema.parametrize()
@settings(parent=settings.get_profile("postyard-fuzz"), max_examples=WITH_KEY_EXAMPLES)
def test_with_a_key_no_5xx_and_every_answer_as_declared(case: Any, target: Target) -> None:
    case.call_and_validate(
        app=target.app, headers={"Authorization": f"Bearer {target.api_key}"}, checks=CHECKS
    )


@schema.parametrize()
@settings(parent=settings.get_profile("postyard-fuzz"), max_examples=WITHOUT_KEY_EXAMPLES)
def test_without_a_key_only_401(case: Any, target: Target) -> None:
    response = case.call(app=target.app)
    # FastAPI decodes a JSON body before any dependency runs, so a body that is not JSON
    # at all is a 400 (malformed_json) even without a key: it reveals nothing either way.
    assert response.status_code in {400, 401, 404, 405, 413, 422}, (
        f"{case.operation.label} without a key answered {response.status_code}: {response.text}"
    )
    code = response.json()["error"]["code"]
    if response.status_code == 401:
        assert code == "unauthorized"
    if response.status_code == 400:
        assert code == "malformed_json"
