"""Several named keys per workspace, two scopes, revocation at once, a rate limit per key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from postyard.api.app import create_app
from postyard.api.rate_limit import RateLimiter
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.migrate import alembic_config
from postyard.routing import Plan
from postyard.services.audit import Actor
from postyard.services.keys import Scope, create_key
from postyard.services.workspaces import create_workspace

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def new_key(api: TestClient, name: str, scope: str | None = None) -> dict[str, Any]:
    body = {"name": name} if scope is None else {"name": name, "scope": scope}
    response = api.post("/v1/keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def as_key(api: TestClient, api_key: str) -> TestClient:
    return TestClient(api.app, headers={"Authorization": f"Bearer {api_key}"})


def listed(api: TestClient) -> dict[int, dict[str, Any]]:
    response = api.get("/v1/keys")
    assert response.status_code == 200, response.text
    return {key["id"]: key for key in response.json()["data"]}


# --- Several named keys --------------------------------------------------------------------


def test_a_created_key_is_shown_once_and_works(api: TestClient) -> None:
    created = new_key(api, "backend")
    assert created["scope"] == "admin"
    assert created["key"].startswith("pk_")
    assert created["last_used_at"] is None and created["revoked_at"] is None
    other = as_key(api, created["key"])
    assert other.get("/v1/routing").status_code == 200

    keys = listed(api)
    assert {key["name"] for key in keys.values()} == {"default", "backend"}
    assert keys[created["id"]]["last_used_at"] is not None
    body = api.get("/v1/keys").text
    assert created["key"] not in body
    assert "key_hash" not in body and '"key"' not in body


def test_the_first_key_of_a_workspace_is_an_admin_key_named_default(api: TestClient) -> None:
    [key] = listed(api).values()
    assert (key["name"], key["scope"], key["revoked_at"]) == ("default", "admin", None)
    assert key["last_used_at"] is not None  # this very request used it


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "x", "scope": "owner"}, {"name": "a\nb"}, {"name": "x", "y": 1}],
    ids=["no-name", "empty-name", "unknown-scope", "two-lines", "unknown-field"],
)
def test_bad_key_requests_are_422(api: TestClient, body: dict[str, Any]) -> None:
    response = api.post("/v1/keys", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_keys_of_another_workspace_are_invisible(make_api: Any) -> None:
    acme, other = make_api(), make_api(name="Other")
    foreign = new_key(other, "theirs")
    assert foreign["id"] not in listed(acme)
    response = acme.delete(f"/v1/keys/{foreign['id']}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert as_key(other, foreign["key"]).get("/v1/routing").status_code == 200


# --- Revocation ----------------------------------------------------------------------------


def test_a_revoked_key_answers_401_at_once(api: TestClient) -> None:
    created = new_key(api, "ci")
    ci = as_key(api, created["key"])
    assert ci.get("/v1/routing").status_code == 200

    response = api.delete(f"/v1/keys/{created['id']}")
    assert response.status_code == 200, response.text
    revoked = response.json()
    assert revoked["revoked_at"] is not None
    assert revoked["revoked_own_key"] is False
    assert "ci" in revoked["message"]

    refused = ci.get("/v1/routing")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert listed(api)[created["id"]]["revoked_at"] == revoked["revoked_at"]
    # Revoking again changes nothing.
    again = api.delete(f"/v1/keys/{created['id']}")
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked["revoked_at"]


def test_a_key_may_revoke_itself_and_is_told_so(api: TestClient) -> None:
    spare = new_key(api, "spare")
    [default_id] = [k for k, key in listed(api).items() if key["name"] == "default"]
    response = api.delete(f"/v1/keys/{default_id}")
    assert response.status_code == 200, response.text
    assert response.json()["revoked_own_key"] is True
    assert "request was made with" in response.json()["message"]
    assert api.get("/v1/keys").status_code == 401
    assert as_key(api, spare["key"]).get("/v1/keys").status_code == 200


# --- Scopes --------------------------------------------------------------------------------


TRACK_ENDPOINTS = {
    ("PUT", "/v1/people/{person_id}"),
    ("DELETE", "/v1/people/{person_id}"),
    ("POST", "/v1/people/{person_id}/events"),
    ("POST", "/v1/batch"),
}


def _endpoints(api: TestClient) -> list[tuple[str, str]]:
    """Every /v1 operation the app serves, from its OpenAPI document."""
    document = api.get("/openapi.json").json()
    return sorted(
        (method.upper(), path)
        for path, operations in document["paths"].items()
        if path.startswith("/v1/")
        for method in operations
    )


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_v1_endpoint_requires_a_key(api: TestClient) -> None:
    endpoints = _endpoints(api)
    assert set(endpoints) >= TRACK_ENDPOINTS | {("POST", "/v1/keys"), ("GET", "/v1/keys")}
    anonymous = TestClient(api.app)
    for method, path in endpoints:
        response = anonymous.request(method, _concrete(path), json={})
        assert response.status_code == 401, (method, path, response.text)


def test_a_track_key_is_refused_everywhere_else_with_403_scope(api: TestClient) -> None:
    """A new endpoint is admin-only unless it takes `TrackCaller`: this walks them all."""
    track = as_key(api, new_key(api, "mobile", "track")["key"])
    checked = 0
    for method, path in _endpoints(api):
        if (method, path) in TRACK_ENDPOINTS:
            continue
        response = track.request(method, _concrete(path), json={})
        assert response.status_code == 403, (method, path, response.text)
        error = response.json()["error"]
        assert error["code"] == "scope", (method, path)
        assert "admin key" in error["message"]
        checked += 1
    assert checked >= 25


def test_a_track_key_identifies_tracks_batches_and_deletes(api: TestClient) -> None:
    track = as_key(api, new_key(api, "mobile", "track")["key"])
    response = track.put("/v1/people/u1", json={"email": "u1@example.com", "plan": "pro"})
    assert response.status_code == 201, response.text
    response = track.post("/v1/people/u1/events", json={"name": "signed_up"})
    assert response.status_code == 201, response.text
    response = track.post(
        "/v1/batch",
        json={"batch": [{"type": "identify", "person_id": "u2", "attributes": {"plan": "free"}}]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [{"index": 0, "ok": True}]
    assert track.get("/v1/people/u1").status_code == 403  # reading is admin's
    assert api.get("/v1/people/u1").json()["attributes"]["plan"] == "pro"
    assert track.delete("/v1/people/u1").status_code == 204
    assert api.get("/v1/people/u1").status_code == 404


def test_an_admin_key_may_do_what_a_track_key_may(api: TestClient) -> None:
    admin = as_key(api, new_key(api, "ops", "admin")["key"])
    assert admin.put("/v1/people/u1", json={"plan": "pro"}).status_code == 201
    assert admin.post("/v1/people/u1/events", json={"name": "x"}).status_code == 201


def test_a_track_key_without_a_valid_key_is_still_401_first(api: TestClient) -> None:
    anonymous = TestClient(api.app)
    assert anonymous.get("/v1/keys").status_code == 401
    assert anonymous.put("/v1/people/u1", json={}).status_code == 401


def _sign_in(client: TestClient, api_key: str) -> Any:
    page = client.get("/login")
    return client.post(
        "/login",
        data={"csrf_token": CSRF.search(page.text)[1], "api_key": api_key, "next": ""},
        follow_redirects=False,
    )


def test_the_web_ui_refuses_a_track_key_and_takes_an_admin_key(api: TestClient) -> None:
    track_key = new_key(api, "mobile", "track")["key"]
    with TestClient(api.app) as browser:
        refused = _sign_in(browser, track_key)
        assert refused.status_code == 403
        assert "track key" in refused.text
        assert "postyard_session" not in refused.cookies
        assert browser.get("/overview", follow_redirects=False).status_code == 303
    with TestClient(api.app) as browser:
        admin_key = new_key(api, "marketing")["key"]
        assert _sign_in(browser, admin_key).status_code == 303
        assert browser.get("/overview", follow_redirects=False).status_code == 200


# --- Rate limit ----------------------------------------------------------------------------


def test_over_the_rate_limit_a_key_gets_429_with_retry_after(
    settings: Settings, database: Database
) -> None:
    limited = Settings(**{**settings.__dict__, "api_rate_limit_per_minute": 3})
    app = create_app(limited, database)
    with database.session() as session:
        first = create_workspace(session, "Acme", Plan.PREMIUM)
    one = TestClient(app, headers={"Authorization": f"Bearer {first.api_key}"})
    for _ in range(3):
        assert one.get("/v1/routing").status_code == 200
    response = one.get("/v1/routing")
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 20
    # Each key has a bucket of its own (made here, without spending the first key's budget).
    with database.session() as session:
        second = create_key(session, Actor.cli(first.workspace_id), "second", Scope.ADMIN)
    assert as_key(one, second.api_key).get("/v1/routing").status_code == 200


def test_a_rate_limit_of_zero_is_off(settings: Settings, database: Database) -> None:
    unlimited = Settings(**{**settings.__dict__, "api_rate_limit_per_minute": 0})
    with database.session() as session:
        created = create_workspace(session, "Acme", Plan.PREMIUM)
    client = TestClient(
        create_app(unlimited, database), headers={"Authorization": f"Bearer {created.api_key}"}
    )
    assert all(client.get("/v1/keys").status_code == 200 for _ in range(20))


def test_the_token_bucket_refills_at_the_per_minute_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.acquire(1) is None for _ in range(60))
    wait = limiter.acquire(1)
    assert wait == pytest.approx(1.0)
    assert limiter.acquire(2) is None  # another key
    now[0] += 0.5
    assert limiter.acquire(1) == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.acquire(1) is None
    now[0] += 3600
    assert sum(limiter.acquire(1) is None for _ in range(100)) == 60  # capped at a minute's worth
    assert RateLimiter(0).acquire(1) is None


# --- Migration -----------------------------------------------------------------------------


def test_the_migration_makes_existing_keys_admin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0002")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO workspaces (name, plan, created_at) VALUES ('a', 'standard', :t)"),
            {"t": "2026-01-01 00:00:00"},
        )
        connection.execute(
            text(
                "INSERT INTO api_keys (workspace_id, name, key_hash, created_at) "
                "VALUES (1, 'default', 'abc', :t)"
            ),
            {"t": "2026-01-01 00:00:00"},
        )
    command.upgrade(alembic_config(url), "head")
    with engine.begin() as connection:
        assert connection.execute(text("SELECT scope FROM api_keys")).scalars().all() == ["admin"]
    engine.dispose()
