"""`/v1/segments`: condition trees, membership kept up to date, members paged.

Membership changes when people and events change, when a segment's conditions
change, and, for conditions with a time window, when time passes: the tests move
an injected clock and run `refresh_time_windows` as the periodic job does.
Campaign triggers are recorded rather than run: these tests check that entries
are reported, once, to `triggers.on_segment_entries`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from people_helpers import FakeClock
from sqlalchemy import func, select, update

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Campaign, Person, Segment, SegmentMember
from postyard.secretbox import secret_box
from postyard.services import segments, triggers
from postyard.services.runtime import Runtime

SEGMENT_KEYS = {
    "id",
    "name",
    "conditions",
    "time_window",
    "member_count",
    "created_at",
    "updated_at",
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Entries = list[tuple[str, list[int]]]


@pytest.fixture
def entries(monkeypatch: pytest.MonkeyPatch) -> Entries:
    """Every `(person_id, segment_ids)` reported to the segment-triggered campaigns."""
    recorded: Entries = []

    def record(session: Any, runtime: Any, person: Person, segment_ids: list[int]) -> None:
        recorded.append((person.person_id, list(segment_ids)))

    monkeypatch.setattr(triggers, "on_segment_entries", record)
    return recorded


@pytest.fixture
def refresh(settings: Settings, database: Database, clock: FakeClock) -> Callable[[], int]:
    """Run the periodic re-evaluation of time-window segments, as the job runner does.

    It covers every workspace of the module's shared database, so tests check
    membership in their own workspace rather than the totals it returns.
    """
    runtime = Runtime(settings, secret_box(settings), clock)

    def run() -> int:
        with database.session() as session:
            return segments.refresh_time_windows(session, runtime)

    return run


def attr(field: str, operator: str, *value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"field": field, "operator": operator}
    if value:
        [body["value"]] = value
    return {"attribute": body}


GOLD = attr("plan", "eq", "gold")


def create(client: TestClient, conditions: Any, name: str = "Segment") -> dict[str, Any]:
    response = client.post("/v1/segments", json={"name": name, "conditions": conditions})
    assert response.status_code == 201, response.text
    return response.json()


def put(client: TestClient, person_id: str, **attributes: Any) -> None:
    client.put(f"/v1/people/{person_id}", json=attributes).raise_for_status()


def track(client: TestClient, person_id: str, name: str, **body: Any) -> None:
    response = client.post(f"/v1/people/{person_id}/events", json={"name": name, **body})
    assert response.status_code == 201, response.text


def members(client: TestClient, segment_id: int) -> list[str]:
    response = client.get(f"/v1/segments/{segment_id}/members", params={"limit": 500})
    assert response.status_code == 200, response.text
    return sorted(member["person_id"] for member in response.json()["data"])


def count(client: TestClient, segment_id: int) -> int:
    return client.get(f"/v1/segments/{segment_id}").json()["member_count"]


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]["message"]


# --- create, read, update, delete -------------------------------------------------------------


def test_create_works_out_the_members(api: TestClient, entries: Entries) -> None:
    put(api, "gold-1", plan="gold")
    put(api, "gold-2", plan="gold", email="g2@example.com")
    put(api, "free", plan="free")
    body = create(api, GOLD, name="Gold customers")
    assert set(body) == SEGMENT_KEYS
    assert body == {
        "id": body["id"],
        "name": "Gold customers",
        "conditions": GOLD,
        "time_window": False,
        "member_count": 2,
        "created_at": "2026-03-01T09:30:00+00:00",
        "updated_at": "2026-03-01T09:30:00+00:00",
    }
    assert members(api, body["id"]) == ["gold-1", "gold-2"]
    assert api.get(f"/v1/segments/{body['id']}").json() == body
    assert sorted(entries) == [("gold-1", [body["id"]]), ("gold-2", [body["id"]])]


def test_time_window_is_set_from_the_conditions(api: TestClient) -> None:
    assert create(api, {"event": {"name": "buy"}})["time_window"] is False
    windowed = {"and": [GOLD, {"not": {"event": {"name": "buy", "within_days": 30}}}]}
    assert create(api, windowed)["time_window"] is True


def test_list_shows_counts(api: TestClient) -> None:
    put(api, "a", plan="gold")
    gold = create(api, GOLD, name="Gold")
    everyone = create(api, attr("plan", "exists"), name="Everyone")
    nobody = create(api, attr("plan", "eq", "platinum"), name="Nobody")
    listed = api.get("/v1/segments").json()["data"]
    assert [(s["id"], s["name"], s["member_count"]) for s in listed] == [
        (gold["id"], "Gold", 1),
        (everyone["id"], "Everyone", 1),
        (nobody["id"], "Nobody", 0),
    ]


def test_patch_renames_without_touching_members(
    api: TestClient, clock: FakeClock, entries: Entries
) -> None:
    put(api, "a", plan="gold")
    segment = create(api, GOLD)
    entries.clear()
    clock.advance(hours=2)
    response = api.patch(f"/v1/segments/{segment['id']}", json={"name": "Renamed"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["conditions"], body["member_count"]) == ("Renamed", GOLD, 1)
    assert body["updated_at"] == "2026-03-01T11:30:00+00:00"
    assert entries == []


def test_patch_of_conditions_recomputes_members(
    api: TestClient, clock: FakeClock, entries: Entries
) -> None:
    put(api, "gold", plan="gold", age=40)
    put(api, "young-gold", plan="gold", age=15)
    put(api, "adult", plan="free", age=30)
    segment = create(api, GOLD)
    entries.clear()
    clock.advance(days=1)
    adults = attr("age", "gte", 18)
    response = api.patch(f"/v1/segments/{segment['id']}", json={"conditions": adults})
    assert response.status_code == 200, response.text
    assert response.json()["member_count"] == 2
    page = api.get(f"/v1/segments/{segment['id']}/members").json()["data"]
    entered = {m["person_id"]: m["entered_at"] for m in page}
    # a member who stays keeps the moment they entered; a new member enters now
    assert entered == {
        "gold": "2026-03-01T09:30:00+00:00",
        "adult": "2026-03-02T09:30:00+00:00",
    }
    assert entries == [("adult", [segment["id"]])]
    windowed = {"event": {"name": "visit", "within_days": 1}}
    body = api.patch(f"/v1/segments/{segment['id']}", json={"conditions": windowed}).json()
    assert (body["time_window"], body["member_count"]) == (True, 0)


def test_delete(api: TestClient, database: Database) -> None:
    put(api, "a", plan="gold")
    segment = create(api, GOLD)
    response = api.delete(f"/v1/segments/{segment['id']}")
    assert response.status_code == 204, response.text
    error(api.get(f"/v1/segments/{segment['id']}"), 404, "not_found")
    error(api.get(f"/v1/segments/{segment['id']}/members"), 404, "not_found")
    assert api.get("/v1/segments").json()["data"] == []
    assert api.get("/v1/people/a").json()["segments"] == []
    with database.session() as session:
        left = session.scalar(
            select(func.count())
            .select_from(SegmentMember)
            .where(SegmentMember.segment_id == segment["id"])
        )
    assert left == 0
    error(api.delete(f"/v1/segments/{segment['id']}"), 404, "not_found")


MESSAGE = {"from": "news@acme.example", "subject": "Hi", "text": "Hello"}


def test_a_segment_a_campaign_uses_cannot_be_deleted(api: TestClient, database: Database) -> None:
    gold = create(api, GOLD)
    triggered = api.post(
        "/v1/campaigns",
        json={
            "name": "Welcome to gold",
            "type": "segment_triggered",
            "message": MESSAGE,
            "trigger": {"segment_id": gold["id"]},
        },
    ).json()
    newsletter = api.post(
        "/v1/campaigns",
        json={
            "name": "Gold news",
            "type": "newsletter",
            "message": MESSAGE,
            "audience": {"segment_id": gold["id"]},
        },
    ).json()
    message = error(api.delete(f"/v1/segments/{gold['id']}"), 409, "segment_in_use")
    assert "Welcome to gold" in message and "Gold news" in message
    assert api.get(f"/v1/segments/{gold['id']}").status_code == 200
    other = create(api, attr("plan", "exists"))
    response = api.patch(
        f"/v1/campaigns/{triggered['id']}", json={"trigger": {"segment_id": other["id"]}}
    )
    assert response.status_code == 200, response.text
    message = error(api.delete(f"/v1/segments/{gold['id']}"), 409, "segment_in_use")
    assert "Welcome to gold" not in message
    with database.session() as session:  # a newsletter that has gone out needs it no more
        session.execute(
            update(Campaign).where(Campaign.id == newsletter["id"]).values(state="sent")
        )
    assert api.delete(f"/v1/segments/{gold['id']}").status_code == 204


def test_members_page_newest_first(api: TestClient) -> None:
    for index in range(7):
        put(api, f"p{index}", plan="gold", email=f"p{index}@example.com")
    put(api, "free", plan="free")
    segment = create(api, GOLD)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"before": cursor} if cursor else {})
        page = api.get(f"/v1/segments/{segment['id']}/members", params=params).json()
        assert set(page) == {"data", "next_cursor"}
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [m["person_id"] for m in seen] == [f"p{i}" for i in reversed(range(7))]
    assert seen[0] == {
        "person_id": "p6",
        "email": "p6@example.com",
        "entered_at": "2026-03-01T09:30:00+00:00",
    }


# --- membership kept up to date ---------------------------------------------------------------


def test_identify_moves_people_in_and_out(
    api: TestClient, clock: FakeClock, entries: Entries
) -> None:
    gold = create(api, GOLD, name="Gold")
    reachable = create(
        api, {"and": [attr("email", "exists"), attr("unsubscribed", "eq", False)]}, "Reachable"
    )
    put(api, "u", plan="free")
    assert members(api, gold["id"]) == members(api, reachable["id"]) == []
    put(api, "u", plan="gold")
    assert members(api, gold["id"]) == ["u"]
    assert entries == [("u", [gold["id"]])]
    put(api, "u", plan="gold", email="u@example.com")
    assert members(api, reachable["id"]) == ["u"]
    assert entries[-1] == ("u", [reachable["id"]])
    put(api, "u", plan=None, unsubscribed=True)
    assert members(api, gold["id"]) == members(api, reachable["id"]) == []
    entries.clear()
    clock.advance(days=1)
    put(api, "u", plan="gold", unsubscribed=False)
    assert entries == [("u", [gold["id"], reachable["id"]])]  # re-entry is an entry
    assert api.get("/v1/people/u").json()["segments"] == [
        {"id": gold["id"], "name": "Gold", "entered_at": "2026-03-02T09:30:00+00:00"},
        {"id": reachable["id"], "name": "Reachable", "entered_at": "2026-03-02T09:30:00+00:00"},
    ]


def test_staying_in_a_segment_is_not_an_entry(api: TestClient, entries: Entries) -> None:
    gold = create(api, GOLD)
    put(api, "u", plan="gold")
    put(api, "u", plan="gold", age=3)
    track(api, "u", "visit")
    assert entries == [("u", [gold["id"]])]


def test_events_move_people_in(api: TestClient, entries: Entries) -> None:
    buyers = create(api, {"event": {"name": "purchase", "min_count": 2}}, "Repeat buyers")
    track(api, "u", "purchase")
    assert members(api, buyers["id"]) == []
    track(api, "u", "page_view")
    track(api, "u", "purchase")
    assert members(api, buyers["id"]) == ["u"]
    assert entries == [("u", [buyers["id"]])]


def test_event_conditions_combine_with_attributes(api: TestClient) -> None:
    segment = create(api, {"and": [GOLD, {"not": {"event": {"name": "churn"}}}]})
    put(api, "u", plan="gold")
    assert members(api, segment["id"]) == ["u"]
    track(api, "u", "churn")
    assert members(api, segment["id"]) == []


def test_on_event_follows_the_segment_entries(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segment entries first, then the event itself, so both kinds of campaign see it."""
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(
        triggers,
        "on_segment_entries",
        lambda session, runtime, person, ids: calls.append(("entries", list(ids))),
    )
    monkeypatch.setattr(
        triggers,
        "on_event",
        lambda session, runtime, person, event: calls.append(
            ("event", (person.person_id, event.name, event.data, event.id is not None))
        ),
    )
    buyers = create(api, {"event": {"name": "purchase"}})
    track(api, "u", "purchase", data={"total": 3})
    assert calls == [
        ("entries", [buyers["id"]]),
        ("event", ("u", "purchase", {"total": 3}, True)),
    ]


def test_deleting_a_person_removes_their_memberships(api: TestClient) -> None:
    segment = create(api, GOLD)
    put(api, "a", plan="gold")
    put(api, "b", plan="gold")
    api.delete("/v1/people/a").raise_for_status()
    assert members(api, segment["id"]) == ["b"]
    assert count(api, segment["id"]) == 1


# --- time windows ----------------------------------------------------------------------------


def test_time_window_membership_changes_as_time_passes(
    api: TestClient, clock: FakeClock, refresh: Callable[[], int], entries: Entries
) -> None:
    recent = create(api, {"event": {"name": "purchase", "within_days": 7}}, "Recent buyers")
    lapsed = create(
        api,
        {
            "and": [
                attr("plan", "exists"),
                {"not": {"event": {"name": "purchase", "within_days": 7}}},
            ]
        },
        "Lapsed",
    )
    put(api, "u", plan="gold")
    assert members(api, lapsed["id"]) == ["u"]
    track(api, "u", "purchase")
    assert members(api, recent["id"]) == ["u"]
    assert members(api, lapsed["id"]) == []
    entries.clear()

    clock.advance(days=6)
    refresh()
    assert members(api, recent["id"]) == ["u"]
    assert entries == []

    clock.advance(days=1, seconds=1)
    assert refresh() >= 2  # out of one segment, into the other
    assert members(api, recent["id"]) == []
    assert members(api, lapsed["id"]) == ["u"]
    assert entries == [("u", [lapsed["id"]])]
    [member] = api.get(f"/v1/segments/{lapsed['id']}/members").json()["data"]
    assert member["entered_at"] == "2026-03-08T09:30:01+00:00"

    entries.clear()
    refresh()
    assert entries == []  # nothing changed, nothing entered


def test_an_old_event_counts_within_its_window(
    api: TestClient, clock: FakeClock, refresh: Callable[[], int]
) -> None:
    """An event recorded late, with its own timestamp, counts from when it happened."""
    recent = create(api, {"event": {"name": "visit", "within_days": 2}})
    track(api, "u", "visit", timestamp="2026-02-28T09:30:00Z")
    assert members(api, recent["id"]) == ["u"]
    track(api, "v", "visit", timestamp="2026-02-20T00:00:00Z")
    assert members(api, recent["id"]) == ["u"]
    clock.advance(days=1, seconds=1)
    refresh()
    assert members(api, recent["id"]) == []


def test_refresh_leaves_segments_without_a_window_alone(
    api: TestClient, database: Database, clock: FakeClock, refresh: Callable[[], int]
) -> None:
    gold = create(api, GOLD)
    put(api, "u", plan="gold")
    with database.session() as session:  # a change behind the API's back, which only a
        session.execute(  # re-evaluation of this segment would notice
            update(Person)
            .where(Person.workspace_id == api.workspace_id)  # type: ignore[attr-defined]
            .values(attributes={})
        )
    clock.advance(days=30)
    refresh()
    assert members(api, gold["id"]) == ["u"]


# --- streaming helpers ------------------------------------------------------------------------


def test_batches_stream_people_and_members_by_keyset(
    make_api: Callable[..., TestClient], database: Database
) -> None:
    api, other = make_api(), make_api()
    for index in range(7):
        put(api, f"p{index}", plan="gold" if index % 2 == 0 else "free")
        put(other, f"o{index}", plan="gold")
    gold = create(api, GOLD)
    with database.session() as session:
        people = list(segments.iter_people_batches(session, api.workspace_id, batch_size=3))  # type: ignore[attr-defined]
        assert [len(batch) for batch in people] == [3, 3, 1]
        assert [p.person_id for batch in people for p in batch] == [f"p{i}" for i in range(7)]
        batches = list(segments.iter_member_batches(session, gold["id"], batch_size=2))
        assert [[p.person_id for p in batch] for batch in batches] == [["p0", "p2"], ["p4", "p6"]]
        assert list(segments.iter_member_batches(session, 2_147_483_647)) == []


# --- other workspaces -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PATCH", "", {"name": "Mine now"}),
        ("PATCH", "", {"conditions": attr("plan", "exists")}),
        ("DELETE", "", None),
        ("GET", "/members", None),
    ],
)
def test_another_workspaces_segment_is_not_found(
    make_api: Callable[..., TestClient], method: str, suffix: str, body: Any
) -> None:
    owner, intruder = make_api(), make_api()
    put(owner, "secret", plan="gold", email="secret@example.com")
    put(intruder, "mine", plan="free")
    segment = create(owner, GOLD, name="Owner's segment")
    before = owner.get(f"/v1/segments/{segment['id']}").json()
    foreign = intruder.request(method, f"/v1/segments/{segment['id']}{suffix}", json=body)
    missing = intruder.request(method, f"/v1/segments/2147483647{suffix}", json=body)
    assert error(foreign, 404, "not_found").replace(str(segment["id"]), "{id}") == error(
        missing, 404, "not_found"
    ).replace("2147483647", "{id}")
    assert "secret" not in foreign.text
    assert owner.get(f"/v1/segments/{segment['id']}").json() == before
    assert members(owner, segment["id"]) == ["secret"]
    assert intruder.get("/v1/segments").json()["data"] == []


def test_a_segment_holds_only_its_workspaces_people(make_api: Callable[..., TestClient]) -> None:
    first, second = make_api(), make_api()
    put(first, "a", plan="gold")
    put(second, "b", plan="gold")
    segment = create(first, GOLD)
    put(second, "c", plan="gold")
    assert members(first, segment["id"]) == ["a"]


# --- bad input --------------------------------------------------------------------------------


def row_counts(database: Database, client: TestClient) -> tuple[list[tuple], int]:
    workspace_id = client.workspace_id  # type: ignore[attr-defined]
    with database.session() as session:
        rows = session.execute(
            select(Segment.__table__)
            .where(Segment.workspace_id == workspace_id)
            .order_by(Segment.id)
        ).all()
        memberships = session.scalar(
            select(func.count())
            .select_from(SegmentMember)
            .join(Segment, Segment.id == SegmentMember.segment_id)
            .where(Segment.workspace_id == workspace_id)
        )
    return [tuple(row) for row in rows], memberships or 0


S = "/v1/segments"
P = "/v1/segments/{id}"
DEEP: dict[str, Any] = GOLD
for _ in range(70):
    DEEP = {"not": DEEP}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "mentions"),
    [
        ("POST", S, b'{"name": ', 400, "malformed_json", None),
        ("POST", S, [], 422, "invalid_request", None),
        ("POST", S, {"conditions": GOLD}, 422, "invalid_request", "name"),
        ("POST", S, {"name": "x"}, 422, "invalid_request", "conditions"),
        ("POST", S, {"name": "", "conditions": GOLD}, 422, "invalid_request", "name"),
        ("POST", S, {"name": "x" * 201, "conditions": GOLD}, 422, "invalid_request", "name"),
        ("POST", S, {"name": "a\nb", "conditions": GOLD}, 422, "invalid_request", "name"),
        ("POST", S, {"name": "x", "conditions": GOLD, "rules": 1}, 422, "invalid_request", "rules"),
        (
            "POST",
            S,
            {"name": "x", "conditions": {"and": [GOLD, attr("plan", "eqq", "gold")]}},
            422,
            "invalid_conditions",
            "$.and[1].attribute.operator: unknown operator 'eqq'",
        ),
        ("POST", S, {"name": "x", "conditions": None}, 422, "invalid_conditions", "$:"),
        ("POST", S, {"name": "x", "conditions": []}, 422, "invalid_conditions", "$:"),
        ("POST", S, {"name": "x", "conditions": {"or": []}}, 422, "invalid_conditions", "$.or:"),
        (
            "POST",
            S,
            {"name": "x", "conditions": {"event": {"name": "e", "within_days": 0}}},
            422,
            "invalid_conditions",
            "$.event.within_days",
        ),
        (
            "POST",
            S,
            {"name": "x", "conditions": {"event": {"name": "e", "within_days": 1e9}}},
            422,
            "invalid_conditions",
            "$.event.within_days",
        ),
        (
            "POST",
            S,
            b'{"name": "x", "conditions": {"attribute": {"field": "a", "operator": "gt", '
            b'"value": NaN}}}',
            422,
            "invalid_request",
            "finite",
        ),
        (
            "POST",
            S,
            {"name": "x", "conditions": attr("a", "eq", "b\x00")},
            422,
            "invalid_request",
            "NUL",
        ),
        ("POST", S, {"name": "x", "conditions": DEEP}, 422, "invalid_request", "nested"),
        ("PATCH", P, {"name": None}, 422, "invalid_request", "name cannot be null"),
        ("PATCH", P, {"conditions": None}, 422, "invalid_request", "conditions cannot be null"),
        ("PATCH", P, {"name": "  "}, 422, "invalid_request", "name"),
        ("PATCH", P, {"time_window": False}, 422, "invalid_request", "time_window"),
        ("PATCH", P, {"member_count": 0}, 422, "invalid_request", "member_count"),
        (
            "PATCH",
            P,
            {"name": "Renamed", "conditions": {"not": {"attribute": {"field": "plan"}}}},
            422,
            "invalid_conditions",
            "$.not.attribute: missing operator",
        ),
        ("PATCH", P, b"[1", 400, "malformed_json", None),
        ("GET", S + "/abc", None, 422, "invalid_request", "segment_id"),
        ("GET", S + "/99999999999", None, 422, "invalid_request", "segment_id"),
        ("DELETE", S + "/1.5", None, 422, "invalid_request", "segment_id"),
        ("GET", P + "/members?limit=0", None, 422, "invalid_request", "limit"),
        ("GET", P + "/members?limit=501", None, 422, "invalid_request", "limit"),
        ("GET", P + "/members?before=x", None, 422, "invalid_request", "before"),
        ("GET", P + "/members?before=99999999999", None, 422, "invalid_request", "before"),
        ("PUT", P, {"name": "x", "conditions": GOLD}, 405, "method_not_allowed", None),
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
    put(api, "u", plan="gold")
    segment = create(api, GOLD)
    before = row_counts(database, api)
    path = path.format(id=segment["id"])
    if isinstance(body, bytes):
        response = api.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
    else:
        response = api.request(method, path, json=body)
    message = error(response, status, code)
    if mentions is not None:
        assert mentions in message
    assert row_counts(database, api) == before
