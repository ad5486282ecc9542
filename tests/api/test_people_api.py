"""`/v1/people`: identify (merge, null removes), events, search, delete.

Time comes from a clock the tests set, so stored times can be checked exactly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from people_helpers import START, FakeClock, stored
from sqlalchemy import select, update

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery
from postyard.delivery import outbox
from postyard.delivery.outbox import Letter
from postyard.routing import Plan
from postyard.secretbox import secret_box
from postyard.services import people
from postyard.services.people import MAX_ATTRIBUTES
from postyard.services.runtime import Runtime
from postyard.services.workspaces import Caller

PERSON_KEYS = {"id", "email", "unsubscribed", "attributes", "created_at", "updated_at"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def put(client: TestClient, person_id: str, status: int = 200, **attributes: Any) -> dict:
    response = client.put(f"/v1/people/{person_id}", json=attributes)
    assert response.status_code == status, response.text
    return response.json()


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]["message"]


# --- identify ---------------------------------------------------------------------------------


def test_identify_creates_then_updates(api: TestClient, clock: FakeClock) -> None:
    created = put(api, "user-1", 201, email="ada@example.com", plan="gold", age=36)
    assert set(created) == PERSON_KEYS
    assert created == {
        "id": "user-1",
        "email": "ada@example.com",
        "unsubscribed": False,
        "attributes": {"plan": "gold", "age": 36},
        "created_at": "2026-03-01T09:30:00+00:00",
        "updated_at": "2026-03-01T09:30:00+00:00",
    }
    clock.advance(hours=1)
    updated = put(api, "user-1", 200, age=37)
    assert updated["attributes"] == {"plan": "gold", "age": 37}
    assert updated["email"] == "ada@example.com"
    assert updated["created_at"] == "2026-03-01T09:30:00+00:00"
    assert updated["updated_at"] == "2026-03-01T10:30:00+00:00"
    assert api.get("/v1/people/user-1").json() | {"segments": []} == updated | {"segments": []}


def test_attributes_merge_and_null_removes(api: TestClient) -> None:
    put(api, "u", 201, a=1, b={"nested": [1, 2]}, c="keep")
    body = put(api, "u", a=None, b={"nested": [3]}, d=[True, None, 1.5], missing=None)
    assert body["attributes"] == {"b": {"nested": [3]}, "c": "keep", "d": [True, None, 1.5]}
    assert put(api, "u")["attributes"] == body["attributes"]  # an empty body changes nothing


def test_an_empty_body_creates_a_bare_person(api: TestClient) -> None:
    body = put(api, "bare", 201)
    assert (body["email"], body["unsubscribed"], body["attributes"]) == (None, False, {})


def test_email_is_validated_and_stored_lower_case(api: TestClient) -> None:
    body = put(api, "u", 201, email="Ada.Lovelace@Example.COM")
    assert body["email"] == "ada.lovelace@example.com"
    assert "email" not in body["attributes"]
    assert put(api, "u", plan="x")["email"] == "ada.lovelace@example.com"  # kept when not sent
    assert put(api, "u", email=None)["email"] is None


def test_unsubscribed_is_an_attribute_with_a_column_of_its_own(api: TestClient) -> None:
    assert put(api, "u", 201, unsubscribed=True)["unsubscribed"] is True
    assert put(api, "u", plan="gold")["unsubscribed"] is True
    body = put(api, "u", unsubscribed=False)
    assert body["unsubscribed"] is False
    assert "unsubscribed" not in body["attributes"]
    put(api, "u", unsubscribed=True)
    assert put(api, "u", unsubscribed=None)["unsubscribed"] is False


def test_person_ids_are_the_workspaces_own(api: TestClient) -> None:
    """Any text but control characters, up to 200 characters, case and spaces included."""
    for person_id in ["User-1", "user-1", "a b", "émile@example.com", "x" * 200, "42"]:
        assert put(api, person_id, 201)["id"] == person_id
        assert api.get(f"/v1/people/{person_id}").json()["id"] == person_id


def test_attribute_limits_are_inclusive(api: TestClient) -> None:
    many = {f"k{i}": i for i in range(MAX_ATTRIBUTES)}
    assert len(put(api, "many", 201, **many)["attributes"]) == MAX_ATTRIBUTES
    # removing one and adding one in the same request stays at the limit
    body = put(api, "many", k0=None, extra=1)
    assert len(body["attributes"]) == MAX_ATTRIBUTES


def test_growing_past_the_limits_by_merging_is_refused(api: TestClient, database: Database) -> None:
    put(api, "u", 201, **{f"k{i}": i for i in range(MAX_ATTRIBUTES - 1)})
    before = stored(database, api)
    message = error(api.put("/v1/people/u", json={"a": 1, "b": 2}), 422, "attribute_limit")
    assert str(MAX_ATTRIBUTES) in message
    assert stored(database, api) == before
    put(api, "big", 201, a="x" * 60_000)
    before = stored(database, api)
    error(api.put("/v1/people/big", json={"b": "y" * 60_000}), 422, "attribute_limit")
    assert stored(database, api) == before


# --- reading ----------------------------------------------------------------------------------


def test_get_shows_segment_memberships(api: TestClient, clock: FakeClock) -> None:
    put(api, "u", 201, plan="gold")
    gold = api.post(
        "/v1/segments",
        json={
            "name": "Gold",
            "conditions": {"attribute": {"field": "plan", "operator": "eq", "value": "gold"}},
        },
    ).json()
    api.post(
        "/v1/segments",
        json={"name": "Nobody", "conditions": {"attribute": {"field": "x", "operator": "exists"}}},
    )
    body = api.get("/v1/people/u").json()
    assert body["segments"] == [
        {"id": gold["id"], "name": "Gold", "entered_at": "2026-03-01T09:30:00+00:00"}
    ]


def test_an_unknown_person_is_not_found(api: TestClient) -> None:
    assert "nobody" in error(api.get("/v1/people/nobody"), 404, "not_found")


def test_search_by_email_and_page(api: TestClient) -> None:
    for index in range(5):
        put(api, f"p{index}", 201, email=f"p{index}@example.com")
    put(api, "twin", 201, email="P2@Example.com")
    found = api.get("/v1/people", params={"email": "P2@EXAMPLE.COM"}).json()
    assert [p["id"] for p in found["data"]] == ["twin", "p2"]
    assert found["next_cursor"] is None
    assert api.get("/v1/people", params={"email": "nobody@example.com"}).json()["data"] == []
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 4} | ({"before": cursor} if cursor else {})
        page = api.get("/v1/people", params=params).json()
        seen += [p["id"] for p in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["twin", "p4", "p3", "p2", "p1", "p0"]


# --- events -----------------------------------------------------------------------------------


def test_an_event_is_recorded_now_by_default(api: TestClient) -> None:
    put(api, "u", 201, email="u@example.com")
    response = api.post("/v1/people/u/events", json={"name": "purchase", "data": {"total": 9.5}})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {
        "id": body["id"],
        "person_id": "u",
        "name": "purchase",
        "data": {"total": 9.5},
        "timestamp": "2026-03-01T09:30:00+00:00",
    }


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2026-02-01T12:00:00Z", "2026-02-01T12:00:00+00:00"),
        ("2026-02-01T12:00:00+02:00", "2026-02-01T10:00:00+00:00"),
        ("2026-02-01T12:00:00", "2026-02-01T12:00:00+00:00"),
        ("2026-02-01", "2026-02-01T00:00:00+00:00"),
        (1_767_225_600, "2026-01-01T00:00:00+00:00"),
        (1_767_225_600.5, "2026-01-01T00:00:00.500000+00:00"),
        (0, "1970-01-01T00:00:00+00:00"),
        (None, "2026-03-01T09:30:00+00:00"),
    ],
)
def test_event_timestamps(api: TestClient, timestamp: Any, expected: str) -> None:
    response = api.post("/v1/people/u/events", json={"name": "e", "timestamp": timestamp})
    assert response.status_code == 201, response.text
    assert response.json()["timestamp"] == expected


def test_an_event_for_an_unknown_person_creates_them_without_email(
    api: TestClient, database: Database
) -> None:
    response = api.post("/v1/people/newcomer/events", json={"name": "page_view"})
    assert response.status_code == 201, response.text
    person = api.get("/v1/people/newcomer").json()
    assert (person["email"], person["attributes"], person["unsubscribed"]) == (None, {}, False)
    api.post("/v1/people/newcomer/events", json={"name": "page_view"}).raise_for_status()
    people, events, _ = stored(database, api)
    assert len(people) == 1
    assert len(events) == 2
    assert put(api, "newcomer", 200, email="new@example.com")["email"] == "new@example.com"


# --- delete -----------------------------------------------------------------------------------


def queue_for(database: Database, client: TestClient, person_id: str, status: str) -> int:
    """A delivery to `person_id` in `status`, queued as a campaign would queue it."""
    letter = Letter(
        campaign_type="newsletter",
        to_address=f"{person_id}@example.com",
        from_address="news@acme.example",
        subject="Hi",
        text_body="Hello",
        person_id=person_id,
    )
    with database.session() as session:
        delivery = outbox.enqueue(
            session,
            client.workspace_id,  # type: ignore[attr-defined]
            letter,
            START,
            timedelta(days=3),
        )
        session.execute(update(Delivery).where(Delivery.id == delivery.id).values(status=status))
        return delivery.id


def deliveries(database: Database, ids: list[int]) -> list[tuple[str, str | None]]:
    with database.session() as session:
        rows = session.execute(
            select(Delivery.status, Delivery.last_error)
            .where(Delivery.id.in_(ids))
            .order_by(Delivery.id)
        )
        return [(status, last_error) for status, last_error in rows]


def test_delete_removes_the_person_and_cancels_their_waiting_mail(
    make_api: Callable[..., TestClient], database: Database
) -> None:
    api, other = make_api(), make_api()
    put(api, "u", 201, email="u@example.com", plan="gold")
    api.post("/v1/people/u/events", json={"name": "signup"}).raise_for_status()
    api.post(
        "/v1/segments",
        json={
            "name": "Gold",
            "conditions": {"attribute": {"field": "plan", "operator": "eq", "value": "gold"}},
        },
    ).raise_for_status()
    put(api, "keep", 201, email="keep@example.com", plan="gold")
    put(other, "u", 201, email="u@other.example")
    mine = [
        queue_for(database, api, "u", status)
        for status in ("queued", "deferred", "sent", "sending")
    ]
    theirs = [queue_for(database, api, "keep", "queued"), queue_for(database, other, "u", "queued")]

    response = api.delete("/v1/people/u")
    assert response.status_code == 204, response.text
    assert response.content == b""

    error(api.get("/v1/people/u"), 404, "not_found")
    people, events, members = stored(database, api)
    assert [p[2] for p in people] == ["keep"]
    assert events == []
    assert members == 1
    assert deliveries(database, mine) == [
        ("cancelled", "person deleted"),
        ("cancelled", "person deleted"),
        ("sent", None),
        ("sending", None),
    ]
    assert deliveries(database, theirs) == [("queued", None), ("queued", None)]
    assert other.get("/v1/people/u").json()["email"] == "u@other.example"
    listed = api.get("/v1/deliveries", params={"person_id": "u", "status": "cancelled"}).json()
    assert len(listed["data"]) == 2


def test_delete_of_an_unknown_person_is_not_found(api: TestClient) -> None:
    error(api.delete("/v1/people/nobody"), 404, "not_found")


def test_a_deleted_person_can_come_back_fresh(api: TestClient) -> None:
    put(api, "u", 201, plan="gold", email="u@example.com")
    api.delete("/v1/people/u").raise_for_status()
    body = put(api, "u", 201, age=3)
    assert (body["email"], body["attributes"]) == (None, {"age": 3})


# --- other workspaces -------------------------------------------------------------------------


def test_another_workspaces_person_is_not_found(
    make_api: Callable[..., TestClient], database: Database
) -> None:
    owner, intruder = make_api(), make_api()
    put(owner, "secret", 201, email="secret@example.com", plan="gold")
    before = stored(database, owner)
    for method in ("GET", "DELETE"):
        foreign = intruder.request(method, "/v1/people/secret")
        missing = intruder.request(method, "/v1/people/missing")
        assert error(foreign, 404, "not_found").replace("secret", "{id}") == error(
            missing, 404, "not_found"
        ).replace("missing", "{id}")
        assert "secret@example.com" not in foreign.text
    assert intruder.get("/v1/people").json()["data"] == []
    assert intruder.get("/v1/people", params={"email": "secret@example.com"}).json()["data"] == []
    # the same id in another workspace is another person
    assert put(intruder, "secret", 201, plan="free")["attributes"] == {"plan": "free"}
    intruder.post("/v1/people/secret/events", json={"name": "x"}).raise_for_status()
    assert stored(database, owner) == before


# --- bad input --------------------------------------------------------------------------------

NAN = b'{"score": NaN}'
DEEP = {"a": json.loads("[" * 40 + "]" * 40)}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "mentions"),
    [
        ("PUT", "/v1/people/u", b'{"plan": ', 400, "malformed_json", None),
        ("PUT", "/v1/people/u", b"", 422, "invalid_request", None),
        ("PUT", "/v1/people/u", [], 422, "invalid_request", "dictionary"),
        # valid JSON of the wrong shape
        ("PUT", "/v1/people/u", "gold", 422, "invalid_request", None),
        ("PUT", "/v1/people/u", NAN, 422, "invalid_request", "finite"),
        ("PUT", "/v1/people/u", b'{"a": [Infinity]}', 422, "invalid_request", "finite"),
        ("PUT", "/v1/people/u", DEEP, 422, "invalid_request", "nested too deeply"),
        ("PUT", "/v1/people/u", {"a": "x\x00y"}, 422, "invalid_request", "NUL"),
        ("PUT", "/v1/people/u", {"a": {"k\x00": 1}}, 422, "invalid_request", "NUL"),
        ("PUT", "/v1/people/u", {"": 1}, 422, "invalid_request", "attribute names"),
        ("PUT", "/v1/people/u", {"x" * 151: 1}, 422, "invalid_request", "attribute names"),
        ("PUT", "/v1/people/u", {"a\nb": 1}, 422, "invalid_request", "control"),
        ("PUT", "/v1/people/u", {"email": "not-an-address"}, 422, "invalid_request", "email"),
        (
            "PUT",
            "/v1/people/u",
            {"email": "a@b.example\r\nBcc: x@y"},
            422,
            "invalid_request",
            "email",
        ),
        ("PUT", "/v1/people/u", {"email": 42}, 422, "invalid_request", "email"),
        ("PUT", "/v1/people/u", {"email": ""}, 422, "invalid_request", "email"),
        ("PUT", "/v1/people/u", {"unsubscribed": "yes"}, 422, "invalid_request", "unsubscribed"),
        ("PUT", "/v1/people/u", {"unsubscribed": 1}, 422, "invalid_request", "unsubscribed"),
        (
            "PUT",
            "/v1/people/u",
            {f"k{i}": i for i in range(MAX_ATTRIBUTES + 1)},
            422,
            "attribute_limit",
            "300",
        ),
        ("PUT", "/v1/people/u", {"a": "x" * 100_001}, 422, "attribute_limit", "bytes"),
        ("PUT", "/v1/people/" + "x" * 201, {}, 422, "invalid_request", "person_id"),
        ("PUT", "/v1/people/a%00b", {}, 422, "invalid_request", "person_id"),
        ("PUT", "/v1/people/a%0Ab", {}, 422, "invalid_request", "person_id"),
        ("PUT", "/v1/people/a%1Bb", {}, 422, "invalid_request", "person_id"),
        ("GET", "/v1/people/a%00b", None, 422, "invalid_request", "person_id"),
        ("DELETE", "/v1/people/" + "x" * 201, None, 422, "invalid_request", "person_id"),
        ("GET", "/v1/people?email=nope", None, 422, "invalid_request", "email"),
        ("GET", "/v1/people?limit=0", None, 422, "invalid_request", "limit"),
        ("GET", "/v1/people?limit=501", None, 422, "invalid_request", "limit"),
        ("GET", "/v1/people?before=abc", None, 422, "invalid_request", "before"),
        ("GET", "/v1/people?before=99999999999", None, 422, "invalid_request", "before"),
        ("POST", "/v1/people", {}, 405, "method_not_allowed", None),
        # events
        ("POST", "/v1/people/u/events", b"{", 400, "malformed_json", None),
        ("POST", "/v1/people/u/events", {}, 422, "invalid_request", "name"),
        ("POST", "/v1/people/u/events", {"name": ""}, 422, "invalid_request", "name"),
        ("POST", "/v1/people/u/events", {"name": "   "}, 422, "invalid_request", "name"),
        ("POST", "/v1/people/u/events", {"name": "x" * 201}, 422, "invalid_request", "name"),
        ("POST", "/v1/people/u/events", {"name": "a\nb"}, 422, "invalid_request", "name"),
        ("POST", "/v1/people/u/events", {"name": 5}, 422, "invalid_request", "name"),
        (
            "POST",
            "/v1/people/u/events",
            {"name": "e", "colour": 1},
            422,
            "invalid_request",
            "colour",
        ),
        ("POST", "/v1/people/u/events", {"name": "e", "data": [1]}, 422, "invalid_request", "data"),
        ("POST", "/v1/people/u/events", {"name": "e", "data": "x"}, 422, "invalid_request", "data"),
        (
            "POST",
            "/v1/people/u/events",
            b'{"name": "e", "data": {"v": -Infinity}}',
            422,
            "invalid_request",
            "data",
        ),
        (
            "POST",
            "/v1/people/u/events",
            {"name": "e", "data": {"v": "\x00"}},
            422,
            "invalid_request",
            "NUL",
        ),
        (
            "POST",
            "/v1/people/u/events",
            {"name": "e", "data": {"v": "x" * 100_001}},
            422,
            "invalid_request",
            "bytes",
        ),
        *(
            (
                "POST",
                "/v1/people/u/events",
                {"name": "e", "timestamp": bad},
                422,
                "invalid_request",
                "timestamp",
            )
            for bad in (
                "yesterday",
                "",
                "2026-13-01",
                "0001-01-01T00:00:00+01:00",
                "1969-12-31T23:59:59Z",
                "9999-12-31T23:59:59-01:00",
                1_767_225_600_000,  # milliseconds
                -1,
                True,
                [2026],
                {"at": 1},
            )
        ),
        (
            "POST",
            "/v1/people/" + "x" * 201 + "/events",
            {"name": "e"},
            422,
            "invalid_request",
            "person_id",
        ),
    ],
)
def test_bad_input_is_refused_and_stores_nothing(
    api: TestClient,
    database: Database,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
    mentions: str | None,
) -> None:
    put(api, "u", 201, email="u@example.com", plan="gold")
    before = stored(database, api)
    if isinstance(body, bytes):
        response = api.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
    else:
        response = api.request(method, path, json=body)
    message = error(response, status, code)
    if mentions is not None:
        assert mentions in message
    assert stored(database, api) == before
    assert api.get("/v1/people/u").json()["attributes"] == {"plan": "gold"}


# --- concurrency ------------------------------------------------------------------------------


def test_concurrent_identifies_neither_fail_nor_lose_attributes(
    api: TestClient, settings: Settings, database: Database
) -> None:
    """Racing requests for one new person: one creates them, the others merge into theirs,
    and no request's attribute is lost (the row lock serialises the merges)."""
    caller = Caller(api.workspace_id, Plan.PREMIUM, 0)  # type: ignore[attr-defined]
    runtime = Runtime(settings, secret_box(settings))
    threads = 8
    start = threading.Barrier(threads)

    def identify(index: int) -> bool:
        start.wait()
        with database.session() as session:
            operation = people.Identify("racer", {f"k{index}": index})
            return people.identify(session, runtime, caller, operation).created

    with ThreadPoolExecutor(threads) as pool:
        created = list(pool.map(identify, range(threads)))
    assert created.count(True) == 1
    body = api.get("/v1/people/racer").json()
    assert body["attributes"] == {f"k{index}": index for index in range(threads)}
