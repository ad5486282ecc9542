"""`/v1/suppressions`: the suppression list by hand, its pages and search, bad input, the wall
between workspaces, and what a suppressed address does to a message queued for it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from postyard.db.engine import Database
from postyard.db.models import Suppression
from postyard.delivery import outbox

S = "/v1/suppressions"


def add(client: TestClient, email: str, status: int = 201, **fields: Any) -> dict[str, Any]:
    response = client.post(S, json={"email": email, **fields})
    assert response.status_code == status, response.text
    return response.json()


def listed(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get(S, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def emails(client: TestClient, **params: Any) -> list[str]:
    return [entry["email"] for entry in listed(client, **params)["data"]]


def stored(database: Database, workspace_id: int) -> list[tuple[str, str]]:
    with database.session() as session:
        rows = session.execute(
            select(Suppression.email, Suppression.reason)
            .where(Suppression.workspace_id == workspace_id)
            .order_by(Suppression.id)
        )
        return [(email, reason) for email, reason in rows]


def error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


# --- create, read, delete ---------------------------------------------------------------------


def test_an_entry_added_by_hand_is_listed(api: TestClient, database: Database) -> None:
    created = add(api, "Bob@Example.COM", reason="asked by phone")
    assert set(created) == {"email", "reason", "created_at"}
    assert created["email"] == "bob@example.com"
    assert created["reason"] == "asked by phone"
    assert created["created_at"].endswith("+00:00")
    assert listed(api) == {"data": [created], "next_cursor": None}
    assert stored(database, api.workspace_id) == [("bob@example.com", "asked by phone")]  # type: ignore[attr-defined]


def test_the_reason_defaults_to_manual_entry(api: TestClient) -> None:
    assert add(api, "bob@example.com")["reason"] == "added manually"


def test_adding_an_address_again_answers_200_with_the_entry_as_it_was(
    api: TestClient, database: Database
) -> None:
    first = add(api, "bob@example.com", reason="complaint")
    again = add(api, "BOB@example.com", status=200, reason="another reason")
    assert again == first
    assert stored(database, api.workspace_id) == [("bob@example.com", "complaint")]  # type: ignore[attr-defined]


def test_an_address_the_worker_suppressed_keeps_its_bounce_reason(
    api: TestClient, database: Database
) -> None:
    with database.session() as session:
        outbox.suppress(session, api.workspace_id, "Gone@Example.com", "hard bounce: 550 5.1.1")  # type: ignore[attr-defined]
    entry = add(api, "gone@example.com", status=200)
    assert entry["reason"] == "hard bounce: 550 5.1.1"


def test_delete_removes_the_entry_in_any_case(api: TestClient, database: Database) -> None:
    add(api, "bob@example.com")
    add(api, "carol@example.com")
    response = api.delete(f"{S}/Bob@EXAMPLE.com")
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert emails(api) == ["carol@example.com"]
    assert error_code(api.delete(f"{S}/bob@example.com"), 404) == "not_found"


def test_deleting_an_address_not_on_the_list_is_404(api: TestClient) -> None:
    assert error_code(api.delete(f"{S}/nobody@example.com"), 404) == "not_found"


def test_an_address_with_a_slash_can_be_added_and_removed(api: TestClient) -> None:
    add(api, "team/sales@example.com")
    assert api.delete(f"{S}/team%2Fsales@example.com").status_code == 204
    assert emails(api) == []


def test_an_entry_the_api_would_refuse_can_still_be_removed(
    api: TestClient, database: Database
) -> None:
    """Whatever the worker stored from a bounce must be removable by hand."""
    with database.session() as session:
        outbox.suppress(session, api.workspace_id, "odd..dots@example.com", "hard bounce")  # type: ignore[attr-defined]
    assert emails(api) == ["odd..dots@example.com"]
    assert api.delete(f"{S}/odd..dots@example.com").status_code == 204
    assert emails(api) == []


# --- pages and search ---------------------------------------------------------------------------


def test_pages_run_newest_first_without_gaps_or_repeats(api: TestClient) -> None:
    addresses = [f"user{n}@example.com" for n in range(7)]
    for address in addresses:
        add(api, address)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"before": cursor} if cursor else {})
        page = listed(api, **params)
        assert len(page["data"]) <= 3
        seen += [entry["email"] for entry in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(addresses))


def test_search_matches_any_part_in_any_case(api: TestClient) -> None:
    for address in ("bob@example.com", "bobby@acme.example", "carol@example.com"):
        add(api, address)
    assert emails(api, email="BOB") == ["bobby@acme.example", "bob@example.com"]
    assert emails(api, email="example.com") == ["carol@example.com", "bob@example.com"]
    assert emails(api, email="bob@example.com") == ["bob@example.com"]
    assert emails(api, email="nobody") == []


def test_search_treats_like_wildcards_as_text(api: TestClient) -> None:
    add(api, "a_b@example.com")
    add(api, "axb@example.com")
    add(api, "percent@example.com")
    assert emails(api, email="a_b") == ["a_b@example.com"]
    assert emails(api, email="%") == []


# --- the wall between workspaces -----------------------------------------------------------------


def test_another_workspaces_list_is_invisible_and_untouchable(
    make_api: Any, database: Database
) -> None:
    ours, theirs = make_api(), make_api()
    add(theirs, "bob@example.com", reason="theirs")
    assert emails(ours) == []
    assert emails(ours, email="bob") == []
    assert error_code(ours.delete(f"{S}/bob@example.com"), 404) == "not_found"
    assert add(ours, "bob@example.com", reason="ours")["reason"] == "ours"  # 201: a list of its own
    assert ours.delete(f"{S}/bob@example.com").status_code == 204
    assert stored(database, theirs.workspace_id) == [("bob@example.com", "theirs")]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", S), ("POST", S), ("DELETE", f"{S}/bob@example.com")],
)
def test_an_api_key_is_required(
    api: TestClient, app_client: TestClient, method: str, path: str, database: Database
) -> None:
    add(api, "bob@example.com")
    response = app_client.request(method, path, json={"email": "carol@example.com"})
    assert error_code(response, 401) == "unauthorized"
    assert stored(database, api.workspace_id) == [("bob@example.com", "added manually")]  # type: ignore[attr-defined]


# --- bad input: a 4xx, and nothing stored -------------------------------------------------------


CRLF = "\r\nBcc: eve@evil.example"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"email": "not-an-address"}, 422, "invalid_request"),
        ({"email": "bob@"}, 422, "invalid_request"),
        ({"email": "@example.com"}, 422, "invalid_request"),
        ({"email": "Bob <bob@example.com>"}, 422, "invalid_request"),
        ({"email": "a@example.com, b@example.com"}, 422, "invalid_request"),
        ({"email": "bob@example.com" + CRLF}, 422, "invalid_request"),
        ({"email": "bob@example.com\n"}, 422, "invalid_request"),
        ({"email": "bob\x00@example.com"}, 422, "invalid_request"),
        ({"email": "x" * 310 + "@example.com"}, 422, "invalid_request"),
        ({"email": ""}, 422, "invalid_request"),
        ({"email": None}, 422, "invalid_request"),
        ({"email": 42}, 422, "invalid_request"),
        ({"email": ["bob@example.com"]}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
        ({"email": "bob@example.com", "reason": "x" + CRLF}, 422, "invalid_request"),
        ({"email": "bob@example.com", "reason": "x\x00"}, 422, "invalid_request"),
        ({"email": "bob@example.com", "reason": "   "}, 422, "invalid_request"),
        ({"email": "bob@example.com", "reason": "x" * 999}, 422, "invalid_request"),
        ({"email": "bob@example.com", "reason": None}, 422, "invalid_request"),
        ({"email": "bob@example.com", "created_at": "2020-01-01"}, 422, "invalid_request"),
        ({"email": "bob@example.com", "workspace_id": 1}, 422, "invalid_request"),
        (["bob@example.com"], 422, "invalid_request"),
        (b'{"email": "bob@example.com",', 400, "malformed_json"),
        (b'{"email": "\xff@example.com"}', 400, "malformed_json"),
        (b"email=bob@example.com", 400, "malformed_json"),
        (b'{"email": "bob@example.com", "pad": "' + b"x" * 1_000_001 + b'"}', 413, None),
    ],
    ids=lambda value: repr(value)[:40] if not isinstance(value, int) else str(value),
)
def test_bad_input_is_refused_and_nothing_stored(
    api: TestClient, database: Database, body: Any, status: int, code: str | None
) -> None:
    if isinstance(body, bytes):
        response = api.post(S, content=body, headers={"Content-Type": "application/json"})
    else:
        response = api.post(S, json=body)
    assert error_code(response, status) == (code or "payload_too_large")
    assert stored(database, api.workspace_id) == []  # type: ignore[attr-defined]


def test_an_unknown_field_is_named(api: TestClient) -> None:
    response = api.post(S, json={"email": "bob@example.com", "reasn": "typo"})
    assert error_code(response, 422) == "invalid_request"
    assert "unknown field 'reasn'" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": "many"},
        {"before": "x"},
        {"before": 2**40},
        {"email": "bob\x00"},
        {"email": "x" * 321},
    ],
    ids=str,
)
def test_bad_list_parameters_are_422(api: TestClient, params: dict[str, Any]) -> None:
    assert error_code(api.get(S, params=params), 422) == "invalid_request"


@pytest.mark.parametrize("path", [f"{S}/bob%00@example.com", f"{S}/{'x' * 321}"])
def test_bad_delete_paths_are_refused(api: TestClient, database: Database, path: str) -> None:
    add(api, "bob@example.com")
    assert error_code(api.delete(path), 422) == "invalid_request"
    assert emails(api) == ["bob@example.com"]


# --- what the list does to mail -----------------------------------------------------------------


def test_a_message_to_a_suppressed_address_is_recorded_suppressed(api: TestClient) -> None:
    add(api, "bob@example.com")
    message = {
        "campaign_type": "newsletter",
        "to": "Bob@Example.com",
        "from": "news@acme.example",
        "subject": "Hello",
        "text": "Hi Bob",
    }
    to_bob = api.post("/v1/test_messages", json=message)
    assert to_bob.status_code == 202, to_bob.text
    assert to_bob.json()["status"] == "suppressed"
    assert to_bob.json()["last_error"] == outbox.SUPPRESSION_LIST
    to_carol = api.post("/v1/test_messages", json=message | {"to": "carol@example.com"})
    assert to_carol.json()["status"] == "queued"

    assert api.delete(f"{S}/bob@example.com").status_code == 204
    after_removal = api.post("/v1/test_messages", json=message)
    assert after_removal.json()["status"] == "queued"
