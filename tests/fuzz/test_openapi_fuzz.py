"""Schemathesis against the OpenAPI document the app serves at `/openapi.json`.

With a valid admin key, every operation of the document is called with generated
input (valid and invalid): no answer is a 5xx, and every answer matches what the
document declares for it (status code, content type, headers, body schema). Without
a key, every operation answers 401 whatever its input, and with a `track` key every
admin operation answers 403 `scope`, while the Track operations behave as with an admin
key; only a generated path that matches no route at all answers 404 or 405 instead.

The caller is checked before the body: broken JSON without a key is a 401, not a 400
(FastAPI reads the body before any dependency runs; the API answers about it only once
the caller is known to be allowed).

The web UI, the unsubscribe pages and `/metrics` are not in the document, so they are
not fuzzed here. The workspace is seeded with one object of each kind so that small
generated ids sometimes hit a real row.
"""

from __future__ import annotations

import dataclasses
import re
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
TRACK_KEY_EXAMPLES = 5
TRACK_OPERATIONS = frozenset(
    {
        "PUT /v1/people/{person_id}",
        "DELETE /v1/people/{person_id}",
        "POST /v1/people/{person_id}/events",
        "POST /v1/batch",
    }
)
"""The operations a `track` key may call (DESIGN: identify, delete, events, batch)."""
NO_ROUTE = {404, 405}
"""A generated path (say, an id with a slash in it) can miss every route, before any check."""
BROKEN_JSON = b'{"name": "unterminated'
PATH_VALUES = {"person_id": "ada"}
"""Values for path parameters that are not numeric ids."""


def served_document_app() -> Any:
    """The app as `postyard serve` builds it; serving its OpenAPI document touches no
    database, so the schema can be loaded at collection time, one test per operation."""
    return create_app(Settings(database_url="sqlite://", secret_key=Fernet.generate_key().decode()))


DOCUMENT = served_document_app().openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@dataclasses.dataclass
class Target:
    app: Any
    api_key: str
    track_key: str
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
        track = client.post("/v1/keys", json={"name": "tracker", "scope": "track"})
        assert track.status_code == 201, track.text
    yield Target(app, created.api_key, track.json()["key"], database.engine.dialect.name)


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
    assert response.status_code in {401, *NO_ROUTE}, (
        f"{case.operation.label} without a key answered {response.status_code}: {response.text}"
    )
    if response.status_code == 401:
        assert response.json()["error"]["code"] == "unauthorized"


@schema.parametrize()
@settings(parent=settings.get_profile("postyard-fuzz"), max_examples=TRACK_KEY_EXAMPLES)
def test_with_a_track_key_403_scope_on_admin_operations_and_track_ones_as_declared(
    case: Any, target: Target
) -> None:
    headers = {"Authorization": f"Bearer {target.track_key}"}
    if case.operation.label in TRACK_OPERATIONS:
        response = case.call_and_validate(app=target.app, headers=headers, checks=CHECKS)
        assert response.status_code not in {401, 403}, response.text
        return
    response = case.call(app=target.app, headers=headers)
    assert response.status_code in {403, *NO_ROUTE}, (
        f"{case.operation.label} with a track key answered {response.status_code}: {response.text}"
    )
    if response.status_code == 403:
        assert response.json()["error"]["code"] == "scope"


def operations_with_a_body() -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
    ]


def test_broken_json_is_answered_only_once_the_caller_is_allowed(target: Target) -> None:
    """Authentication first, on every operation that takes a body: 401 without a key or with
    a wrong one, 403 for a track key on an admin operation; only a caller allowed to make the
    request learns that its body is not JSON."""
    expected: dict[str, list[tuple[int, str]]] = {}
    answered: dict[str, list[tuple[int, str]]] = {}
    with TestClient(target.app) as client:
        for method, path in operations_with_a_body():
            label = f"{method} {path}"
            concrete = re.sub(r"\{(\w+)\}", lambda match: PATH_VALUES.get(match[1], "1"), path)
            answers = []
            for key in (None, "pk_not_a_key", target.track_key, target.api_key):
                headers = {"Content-Type": "application/json"}
                if key is not None:
                    headers["Authorization"] = f"Bearer {key}"
                response = client.request(method, concrete, content=BROKEN_JSON, headers=headers)
                answers.append((response.status_code, response.json()["error"]["code"]))
            answered[label] = answers
            as_track = (400, "malformed_json") if label in TRACK_OPERATIONS else (403, "scope")
            unauthorized = (401, "unauthorized")
            expected[label] = [unauthorized, unauthorized, as_track, (400, "malformed_json")]
    assert answered == expected
