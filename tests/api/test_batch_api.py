"""`POST /v1/batch`: many identify, event and delete operations, each answered on its own."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from people_helpers import stored

from postyard.db.engine import Database
from postyard.services import triggers
from postyard.services.people import MAX_ATTRIBUTES


def batch(client: TestClient, *operations: Any) -> list[dict[str, Any]]:
    response = client.post("/v1/batch", json={"batch": list(operations)})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(operations)))
    return results


def identify(person_id: str, **attributes: Any) -> dict[str, Any]:
    return {"type": "identify", "person_id": person_id, "attributes": attributes}


def event(person_id: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"type": "event", "person_id": person_id, "name": name, **fields}


def delete(person_id: str) -> dict[str, Any]:
    return {"type": "delete", "person_id": person_id}


def ok(results: list[dict[str, Any]]) -> list[bool]:
    return [r["ok"] for r in results]


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def test_every_kind_of_operation(api: TestClient) -> None:
    api.put("/v1/people/leaving", json={"plan": "free"}).raise_for_status()
    results = batch(
        api,
        identify("ada", email="Ada@Example.com", plan="gold"),
        event("ada", "signup", data={"source": "ads"}, timestamp="2026-01-01T00:00:00Z"),
        event("grace", "page_view", timestamp=1_767_225_600),
        delete("leaving"),
    )
    assert results == [
        {"index": 0, "ok": True},
        {"index": 1, "ok": True},
        {"index": 2, "ok": True},
        {"index": 3, "ok": True},
    ]
    ada = api.get("/v1/people/ada").json()
    assert (ada["email"], ada["attributes"]) == ("ada@example.com", {"plan": "gold"})
    assert api.get("/v1/people/grace").json()["email"] is None
    assert api.get("/v1/people/leaving").status_code == 404


def test_bad_operations_spare_the_others(api: TestClient, database: Database) -> None:
    api.put("/v1/people/full", json={f"k{i}": i for i in range(MAX_ATTRIBUTES)}).raise_for_status()
    results = batch(
        api,
        identify("a", plan="gold"),  # 0
        {"type": "merge", "person_id": "a"},  # 1
        {"person_id": "a"},  # 2
        5,  # 3
        None,  # 4
        identify("b", email="not-an-address"),  # 5
        event("a", ""),  # 6
        event("a", "x", timestamp="yesterday"),  # 7
        identify("", plan="gold"),  # 8
        identify("x" * 201),  # 9
        {"type": "identify", "person_id": "c", "attributes": {}, "extra": 1},  # 10
        identify("full", more=1),  # 11: over the attribute limit once merged
        identify("new", **{f"k{i}": i for i in range(MAX_ATTRIBUTES + 1)}),  # 12
        delete("nobody"),  # 13
        event("a", "signup"),  # 14
        {"type": "event", "person_id": "a", "name": "x", "data": [1]},  # 15
        identify("a", age=3),  # 16
    )
    assert ok(results) == [True] + [False] * 13 + [True, False, True]
    codes = {r["index"]: r["error"]["code"] for r in results if not r["ok"]}
    assert codes == {
        **{i: "invalid_request" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15)},
        11: "attribute_limit",
        12: "attribute_limit",
        13: "not_found",
    }
    messages = {r["index"]: r["error"]["message"] for r in results if not r["ok"]}
    assert "merge" in messages[1]
    assert "person_id" in messages[9]
    assert "unknown field 'extra'" in messages[10]
    assert "email" in messages[5]
    assert "timestamp" in messages[7]
    assert "nobody" in messages[13]
    assert all(set(r) == {"index", "ok"} for r in results if r["ok"])
    assert api.get("/v1/people/a").json()["attributes"] == {"plan": "gold", "age": 3}
    for refused in ("b", "c", "new"):
        assert api.get(f"/v1/people/{refused}").status_code == 404
    assert len(api.get("/v1/people/full").json()["attributes"]) == MAX_ATTRIBUTES
    people, events, _ = stored(database, api)
    assert sorted(p[2] for p in people) == ["a", "full"]
    assert [e[3] for e in events] == ["signup"]


def test_operations_apply_in_order(api: TestClient) -> None:
    results = batch(
        api,
        identify("u", plan="gold", email="u@example.com"),
        event("u", "signup"),
        delete("u"),
        delete("u"),
        identify("u", age=4),
        identify("u", age=None, plan="free"),
    )
    assert ok(results) == [True, True, True, False, True, True]
    body = api.get("/v1/people/u").json()
    assert (body["email"], body["attributes"]) == (None, {"plan": "free"})


def test_membership_and_triggers_follow_each_operation(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, Any]] = []
    monkeypatch.setattr(
        triggers,
        "on_segment_entries",
        lambda session, runtime, person, ids: calls.append(("entries", person.person_id, ids)),
    )
    monkeypatch.setattr(
        triggers,
        "on_event",
        lambda session, runtime, person, event: calls.append(
            ("event", person.person_id, event.name)
        ),
    )
    gold = api.post(
        "/v1/segments",
        json={
            "name": "Gold",
            "conditions": {"attribute": {"field": "plan", "operator": "eq", "value": "gold"}},
        },
    ).json()
    buyers = api.post(
        "/v1/segments", json={"name": "Buyers", "conditions": {"event": {"name": "buy"}}}
    ).json()
    batch(
        api,
        identify("a", plan="gold"),
        identify("b", plan="free"),
        event("b", "buy"),
        identify("a", plan="gold", age=1),
        identify("b", plan="gold"),
    )
    assert calls == [
        ("entries", "a", [gold["id"]]),
        ("entries", "b", [buyers["id"]]),
        ("event", "b", "buy"),
        ("entries", "b", [gold["id"]]),
    ]
    members = api.get(f"/v1/segments/{gold['id']}/members").json()["data"]
    assert sorted(m["person_id"] for m in members) == ["a", "b"]


def test_a_delete_cannot_reach_another_workspace(make_api: Any, database: Database) -> None:
    owner, intruder = make_api(), make_api()
    owner.put("/v1/people/secret", json={"email": "s@example.com"}).raise_for_status()
    before = stored(database, owner)
    [result] = batch(intruder, delete("secret"))
    assert (result["ok"], result["error"]["code"]) == (False, "not_found")
    assert stored(database, owner) == before


def test_a_full_batch(api: TestClient, database: Database) -> None:
    operations = [identify(f"p{i}", email=f"p{i}@example.com", n=i) for i in range(500)]
    operations += [event(f"p{i}", "signup", data={"n": i}) for i in range(500)]
    results = batch(api, *operations)
    assert all(ok(results))
    people, events, _ = stored(database, api)
    assert (len(people), len(events)) == (500, 500)


@pytest.mark.parametrize(
    ("body", "status", "code", "mentions"),
    [
        (b'{"batch": [', 400, "malformed_json", None),
        ({}, 422, "invalid_request", "batch"),
        ({"batch": []}, 422, "invalid_request", "batch"),
        ({"batch": {"type": "delete", "person_id": "u"}}, 422, "invalid_request", "batch"),
        ({"batch": [delete("u")] * 1001}, 422, "invalid_request", "batch"),
        ({"batch": [delete("u")], "atomic": True}, 422, "invalid_request", "atomic"),
        ([delete("u")], 422, "invalid_request", None),
    ],
)
def test_a_bad_envelope_is_refused_whole(
    api: TestClient, database: Database, body: Any, status: int, code: str, mentions: str | None
) -> None:
    api.put("/v1/people/u", json={"plan": "gold"}).raise_for_status()
    before = stored(database, api)
    if isinstance(body, bytes):
        response = api.post("/v1/batch", content=body, headers={"content-type": "application/json"})
    else:
        response = api.post("/v1/batch", json=body)
    message = error(response, status, code)
    if mentions is not None:
        assert mentions in message
    assert stored(database, api) == before


def test_the_limit_is_inclusive(api: TestClient) -> None:
    results = batch(api, *[event("u", "tick")] * 1000)
    assert all(ok(results))


def test_a_batch_of_only_bad_operations_answers_each(api: TestClient, database: Database) -> None:
    before = stored(database, api)
    results = batch(api, {"type": "identify"}, delete("nobody"), 7)
    assert ok(results) == [False, False, False]
    assert [r["error"]["code"] for r in results] == [
        "invalid_request",
        "not_found",
        "invalid_request",
    ]
    assert stored(database, api) == before
