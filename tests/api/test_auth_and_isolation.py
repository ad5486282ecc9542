"""Authentication (Bearer API key) and the wall between workspaces.

Another workspace's object must be indistinguishable from one that does not
exist: same status, same code, same message but for the id.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from postyard.clock import utcnow
from postyard.db.engine import Database
from postyard.db.models import ApiKey, Delivery, SmtpServer

MISSING_ID = 2_147_483_647

ENDPOINTS = [
    ("GET", "/v1/smtp_servers", None),
    ("POST", "/v1/smtp_servers", {"name": "smtp-main", "host": "smtp.example.com"}),
    ("GET", "/v1/smtp_servers/1", None),
    ("PATCH", "/v1/smtp_servers/1", {"port": 25}),
    ("DELETE", "/v1/smtp_servers/1", None),
    ("POST", "/v1/smtp_servers/1/test", None),
    ("GET", "/v1/routing", None),
    (
        "POST",
        "/v1/test_messages",
        {
            "campaign_type": "newsletter",
            "to": "bob@example.com",
            "from": "news@acme.example",
            "subject": "Hi",
            "text": "Hello",
        },
    ),
    ("GET", "/v1/deliveries", None),
    ("GET", "/v1/deliveries/1", None),
]
ENDPOINT_IDS = [f"{method} {path}" for method, path, _ in ENDPOINTS]


def create(client: TestClient, name: str, **fields: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/smtp_servers", json={"name": name, "host": "smtp.example.com", **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


def queue(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {
        "campaign_type": "newsletter",
        "to": "bob@example.com",
        "from": "news@acme.example",
        "subject": "Hi",
        "text": "Hello",
    }
    response = client.post("/v1/test_messages", json=body | fields)
    assert response.status_code == 202, response.text
    return response.json()


def row_counts(database: Database) -> tuple[int, int]:
    with database.session() as session:
        servers = session.scalar(select(func.count()).select_from(SmtpServer))
        deliveries = session.scalar(select(func.count()).select_from(Delivery))
    return servers or 0, deliveries or 0


def error_body(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    return body


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_every_endpoint_refuses_a_request_without_credentials(
    app_client: TestClient, database: Database, method: str, path: str, body: Any
) -> None:
    before = row_counts(database)
    response = app_client.request(method, path, json=body)
    error_body(response, 401, "unauthorized")
    assert row_counts(database) == before


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer pk_not-a-real-key",
        "Bearer ",
        "Bearer",
        "Basic {key}",
        "{key}",
        "Bearer {key}x",
        "Bearer x{key}",
        "Token {key}",
    ],
)
def test_a_wrong_or_malformed_key_is_unauthorized(
    app_client: TestClient, api: TestClient, authorization: str
) -> None:
    header = authorization.format(key=api.api_key)  # type: ignore[attr-defined]
    response = app_client.get("/v1/smtp_servers", headers={"Authorization": header})
    body = error_body(response, 401, "unauthorized")
    assert api.api_key not in body["error"]["message"]  # type: ignore[attr-defined]


def test_the_scheme_is_case_insensitive(app_client: TestClient, api: TestClient) -> None:
    response = app_client.get(
        "/v1/smtp_servers",
        headers={"Authorization": f"bearer {api.api_key}"},  # type: ignore[attr-defined]
    )
    assert response.status_code == 200, response.text


def test_a_revoked_key_is_unauthorized(api: TestClient, database: Database) -> None:
    assert api.get("/v1/routing").status_code == 200
    with database.session() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.workspace_id == api.workspace_id)  # type: ignore[attr-defined]
            .values(revoked_at=utcnow())
        )
    error_body(api.get("/v1/routing"), 401, "unauthorized")


def test_a_refused_request_with_a_valid_body_stores_nothing(
    app_client: TestClient, api: TestClient, database: Database
) -> None:
    before = row_counts(database)
    bad = {"Authorization": "Bearer pk_wrong"}
    body = {"name": "smtp-main", "host": "smtp.example.com"}
    error_body(app_client.post("/v1/smtp_servers", json=body, headers=bad), 401, "unauthorized")
    assert row_counts(database) == before
    assert api.get("/v1/smtp_servers").json()["data"] == []


# --- isolation between workspaces ------------------------------------------------------------


def same_but_for_id(foreign: httpx.Response, missing: httpx.Response, foreign_id: int) -> None:
    """A foreign id answers exactly as a missing one does."""
    assert foreign.status_code == missing.status_code == 404
    error_body(foreign, 404, "not_found")
    assert foreign.headers["content-type"] == missing.headers["content-type"]
    foreign_message = foreign.json()["error"]["message"].replace(str(foreign_id), "{id}")
    missing_message = missing.json()["error"]["message"].replace(str(MISSING_ID), "{id}")
    assert foreign_message == missing_message


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PATCH", "", {"port": 2525}),
        ("PATCH", "", {"role": "none"}),
        ("DELETE", "", None),
        ("POST", "/test", None),
    ],
)
def test_another_workspaces_server_is_not_found(
    make_api: Any, method: str, suffix: str, body: Any
) -> None:
    owner, intruder = make_api(), make_api()
    server = create(owner, "smtp-main", password="owner-secret")
    before = owner.get(f"/v1/smtp_servers/{server['id']}").json()
    foreign = intruder.request(method, f"/v1/smtp_servers/{server['id']}{suffix}", json=body)
    missing = intruder.request(method, f"/v1/smtp_servers/{MISSING_ID}{suffix}", json=body)
    same_but_for_id(foreign, missing, server["id"])
    assert "smtp-main" not in foreign.text
    assert owner.get(f"/v1/smtp_servers/{server['id']}").json() == before


def test_another_workspaces_delivery_is_not_found(make_api: Any) -> None:
    owner, intruder = make_api(), make_api()
    delivery = queue(owner, to="secret-recipient@example.com")
    foreign = intruder.get(f"/v1/deliveries/{delivery['id']}")
    missing = intruder.get(f"/v1/deliveries/{MISSING_ID}")
    same_but_for_id(foreign, missing, delivery["id"])
    assert "secret-recipient" not in foreign.text


def test_lists_show_only_the_callers_own_objects(make_api: Any) -> None:
    first, second = make_api(), make_api()
    first_servers = {create(first, "smtp-main")["id"], create(first, "smtp-news")["id"]}
    second_servers = {create(second, "smtp-main")["id"]}  # the same name is fine elsewhere
    first_deliveries = {queue(first)["id"], queue(first)["id"]}
    second_deliveries = {queue(second)["id"]}
    assert {s["id"] for s in first.get("/v1/smtp_servers").json()["data"]} == first_servers
    assert {s["id"] for s in second.get("/v1/smtp_servers").json()["data"]} == second_servers
    assert {d["id"] for d in first.get("/v1/deliveries").json()["data"]} == first_deliveries
    assert {d["id"] for d in second.get("/v1/deliveries").json()["data"]} == second_deliveries
    # filtering by another workspace's server, or paging past its ids, reveals nothing
    foreign_server = next(iter(first_servers))
    response = second.get("/v1/deliveries", params={"smtp_server_id": foreign_server})
    assert response.json()["data"] == []
    response = second.get(
        "/v1/deliveries", params={"before": max(first_deliveries | second_deliveries) + 1}
    )
    assert {d["id"] for d in response.json()["data"]} == second_deliveries


def test_routing_is_per_workspace(make_api: Any) -> None:
    first, second = make_api(), make_api()
    create(first, "first-main")
    create(first, "first-news", role="newsletters")
    create(second, "second-main")
    first_routes = {r["campaign_type"]: r for r in first.get("/v1/routing").json()["routes"]}
    second_body = second.get("/v1/routing").json()
    assert first_routes["newsletter"]["smtp_server_name"] == "first-news"
    assert {r["smtp_server_name"] for r in second_body["routes"]} == {"second-main"}
    assert second_body["unused_servers"] == []
    third = make_api()
    assert {r["via"] for r in third.get("/v1/routing").json()["routes"]} == {None}


def test_rules_count_only_the_callers_servers(make_api: Any) -> None:
    """R1 and R4 look at one workspace: another's servers use none of its cap or roles."""
    premium, standard = make_api("premium"), make_api("standard")
    create(premium, "p-main")
    create(premium, "p-news", role="newsletters")
    created = create(standard, "s-main")
    assert created["role"] == "all_emails"  # R2: first server of *this* workspace
    response = premium.post(
        "/v1/smtp_servers",
        json={"name": "p-news-2", "host": "smtp.example.com", "role": "newsletters"},
    )
    assert response.status_code == 409
    other = make_api("premium")
    create(other, "o-main")
    assert create(other, "o-news", role="newsletters")["role"] == "newsletters"
