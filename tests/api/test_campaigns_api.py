"""`/v1/campaigns`: the four types and their settings, states, newsletter sends, broadcast
triggers; bad input (a 4xx, nothing stored) and another workspace's ids (404)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from postyard.db.engine import Database
from postyard.db.models import BroadcastTrigger, Campaign

ApiFactory = Callable[..., TestClient]
C = "/v1/campaigns"
MESSAGE = {
    "from": "Acme <news@acme.example>",
    "subject": "Hello {{ customer.first_name }}",
    "text": "Hi {{ customer.first_name }}",
}


def segment(api: TestClient, name: str = "pro") -> int:
    response = api.post(
        "/v1/segments",
        json={
            "name": name,
            "conditions": {"attribute": {"field": "plan", "operator": "eq", "value": "pro"}},
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def body(campaign_type: str, api: TestClient | None = None, **fields: Any) -> dict[str, Any]:
    """A valid create body of the type; segment-based types need `api` to make a segment."""
    base: dict[str, Any] = {"name": f"A {campaign_type}", "type": campaign_type, "message": MESSAGE}
    if campaign_type == "segment_triggered":
        assert api is not None
        base["trigger"] = {"segment_id": segment(api)}
    elif campaign_type == "event_triggered":
        base["trigger"] = {"event_name": "signed_up"}
    elif campaign_type == "newsletter":
        base["audience"] = {"all": True}
    return base | fields


def create(api: TestClient, campaign_type: str, **fields: Any) -> dict[str, Any]:
    response = api.post(C, json=body(campaign_type, api, **fields))
    assert response.status_code == 201, response.text
    return response.json()


def stored_campaigns(api: TestClient) -> list[dict[str, Any]]:
    response = api.get(C)
    assert response.status_code == 200
    return response.json()["data"]


def assert_error(response: Any, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for fragment in fragments:
        assert fragment in error["message"], error


# --- create, read, list -------------------------------------------------------------------


def test_create_each_type_with_its_defaults(api: TestClient) -> None:
    segment_triggered = create(api, "segment_triggered")
    event_triggered = create(api, "event_triggered")
    newsletter = create(api, "newsletter")
    broadcast = create(api, "triggered_broadcast")

    assert segment_triggered["state"] == "draft"
    assert (segment_triggered["re_entry"], segment_triggered["include_existing"]) == (False, False)
    assert segment_triggered["frequency"] is None
    assert event_triggered["trigger"] == {"event_name": "signed_up"}
    assert event_triggered["frequency"] == "every"
    assert newsletter["audience"] == {"all": True}
    assert newsletter["send_at"] is None
    assert broadcast["audience"] == {"all": True}  # the default audience
    assert broadcast["message"] == {
        "from": "Acme <news@acme.example>",
        "reply_to": None,
        "subject": "Hello {{ customer.first_name }}",
        "text": "Hi {{ customer.first_name }}",
        "html": None,
    }
    assert broadcast["counts"] == {"by_status": {}, "by_server": {}}


def test_get_and_list_campaigns(api: TestClient) -> None:
    newsletter = create(api, "newsletter", name="Weekly")
    broadcast = create(api, "triggered_broadcast", name="Outage")

    got = api.get(f"{C}/{newsletter['id']}")
    listed = stored_campaigns(api)
    only_broadcasts = api.get(C, params={"type": "triggered_broadcast"}).json()["data"]

    assert got.status_code == 200
    assert got.json()["name"] == "Weekly"
    assert got.json()["counts"] == {"by_status": {}, "by_server": {}}
    assert [c["id"] for c in listed] == [newsletter["id"], broadcast["id"]]
    assert [c["id"] for c in only_broadcasts] == [broadcast["id"]]


def test_a_full_event_triggered_campaign_is_stored_as_sent(api: TestClient) -> None:
    filter_tree = {"attribute": {"field": "plan", "operator": "in", "value": ["pro", "team"]}}
    created = create(
        api,
        "event_triggered",
        trigger={"event_name": "purchase", "filter": filter_tree},
        frequency="once",
        state="active",
        message={**MESSAGE, "reply_to": "help@acme.example", "html": "<p>{{ event.plan }}</p>"},
    )

    assert created["trigger"] == {"event_name": "purchase", "filter": filter_tree}
    assert (created["frequency"], created["state"]) == ("once", "active")
    assert created["message"]["reply_to"] == "help@acme.example"
    assert created["message"]["html"] == "<p>{{ event.plan }}</p>"


def test_a_newsletter_to_a_segment(api: TestClient) -> None:
    segment_id = segment(api)

    created = create(api, "newsletter", audience={"segment_id": segment_id})

    assert created["audience"] == {"segment_id": segment_id}


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "change", "status", "code", "fragment"),
    [
        ("no name", {"name": ""}, 422, "invalid_request", "name"),
        ("unknown type", {"type": "transactional"}, 422, "invalid_request", "type"),
        ("unknown field", {"colour": "red"}, 422, "invalid_request", "unknown field 'colour'"),
        ("no message", {"message": None}, 422, "invalid_request", "message"),
        (
            "no subject",
            {"message": {"from": "a@acme.example", "text": "x"}},
            422,
            "invalid_request",
            "subject",
        ),
        (
            "no body",
            {"message": {"from": "a@acme.example", "subject": "x"}},
            422,
            "invalid_request",
            "needs a body",
        ),
        (
            "from is not an address",
            {"message": {**MESSAGE, "from": "Acme News"}},
            422,
            "invalid_request",
            "message.from",
        ),
        (
            "CRLF in the subject",
            {"message": {**MESSAGE, "subject": "Hi\r\nBcc: eve@evil.example"}},
            422,
            "invalid_request",
            "single line",
        ),
        (
            "NUL in the body",
            {"message": {**MESSAGE, "text": "a\x00b"}},
            422,
            "invalid_request",
            "NUL",
        ),
        (
            "template does not parse",
            {"message": {**MESSAGE, "text": "Hi\n{{ customer.name | nope }}"}},
            422,
            "template_syntax",
            "message.text: line 2, column 20: unknown filter 'nope'",
        ),
        (
            "unclosed tag in the subject",
            {"message": {**MESSAGE, "subject": "{% if x %}Hi"}},
            422,
            "template_syntax",
            "message.subject: line 1, column 4",
        ),
        ("bad state", {"state": "sent"}, 422, "invalid_request", "state"),
        (
            "a trigger on a broadcast",
            {"trigger": {"event_name": "x"}},
            422,
            "invalid_request",
            "trigger does not apply",
        ),
        ("re_entry on a broadcast", {"re_entry": True}, 422, "invalid_request", "re_entry"),
        ("frequency on a broadcast", {"frequency": "once"}, 422, "invalid_request", "frequency"),
        ("frequency not known", {"frequency": "daily"}, 422, "invalid_request", "frequency"),
        (
            "audience with both",
            {"audience": {"all": True, "segment_id": 1}},
            422,
            "invalid_request",
            "audience",
        ),
        ("audience all false", {"audience": {"all": False}}, 422, "invalid_request", "audience"),
        (
            "audience segment unknown",
            {"audience": {"segment_id": 999_999}},
            422,
            "unknown_segment",
            "999999",
        ),
        (
            "audience segment id too large",
            {"audience": {"segment_id": 2**40}},
            422,
            "invalid_request",
            "segment_id",
        ),
    ],
)
def test_bad_input_to_create_is_refused_and_nothing_is_stored(
    api: TestClient, label: str, change: dict[str, Any], status: int, code: str, fragment: str
) -> None:
    response = api.post(C, json=body("triggered_broadcast") | change)

    assert_error(response, status, code, fragment)
    assert stored_campaigns(api) == []


@pytest.mark.parametrize(
    ("campaign_type", "change", "code", "fragment"),
    [
        ("segment_triggered", {"trigger": None}, "invalid_request", "trigger.segment_id"),
        ("segment_triggered", {"trigger": {}}, "invalid_request", "trigger.segment_id"),
        (
            "segment_triggered",
            {"trigger": {"segment_id": 999_999}},
            "unknown_segment",
            "trigger.segment_id",
        ),
        ("segment_triggered", {"frequency": "once"}, "invalid_request", "frequency"),
        ("segment_triggered", {"audience": {"all": True}}, "invalid_request", "audience"),
        ("event_triggered", {"trigger": None}, "invalid_request", "trigger.event_name"),
        (
            "event_triggered",
            {"trigger": {"event_name": "x", "segment_id": 1}},
            "invalid_request",
            "trigger.segment_id does not apply",
        ),
        ("event_triggered", {"re_entry": True}, "invalid_request", "re_entry"),
        (
            "event_triggered",
            {"trigger": {"event_name": "x", "filter": {"and": [{"attribute": {"field": "p"}}]}}},
            "invalid_conditions",
            "trigger.filter: $.and[0].attribute: missing operator",
        ),
        (
            "event_triggered",
            {"trigger": {"event_name": "x", "filter": {"event": {"name": "y"}}}},
            "invalid_conditions",
            "$.event: event conditions cannot be used here",
        ),
        ("event_triggered", {"trigger": {"event_name": ""}}, "invalid_request", "event_name"),
        ("newsletter", {"audience": None}, "invalid_request", "need an audience"),
        ("newsletter", {"state": "active"}, "invalid_state", "draft"),
        ("newsletter", {"include_existing": True}, "invalid_request", "include_existing"),
    ],
)
def test_settings_that_do_not_fit_the_type_are_refused(
    api: TestClient, campaign_type: str, change: dict[str, Any], code: str, fragment: str
) -> None:
    response = api.post(C, json=body(campaign_type, api) | change)

    assert_error(response, 422, code, fragment)
    assert stored_campaigns(api) == []


def test_a_segment_of_another_workspace_is_refused(make_api: ApiFactory) -> None:
    mine, theirs = make_api(), make_api(name="Other")
    their_segment = segment(theirs)

    as_trigger = mine.post(
        C,
        json=body("event_triggered")
        | {
            "type": "segment_triggered",
            "trigger": {"segment_id": their_segment},
        },
    )
    as_audience = mine.post(C, json=body("newsletter", audience={"segment_id": their_segment}))

    assert_error(as_trigger, 422, "unknown_segment")
    assert_error(as_audience, 422, "unknown_segment")
    assert stored_campaigns(mine) == []


def test_a_filter_with_nan_is_refused_not_stored(api: TestClient) -> None:
    raw = json.dumps(body("event_triggered")).replace(
        '"signed_up"}',
        '"signed_up", "filter": {"attribute": {"field": "n", "operator": "gt", "value": NaN}}}',
    )

    response = api.post(C, content=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert stored_campaigns(api) == []


def test_malformed_json_is_a_400(api: TestClient) -> None:
    response = api.post(C, content=b"{", headers={"Content-Type": "application/json"})

    assert_error(response, 400, "malformed_json")


# --- update ---------------------------------------------------------------------------------


def test_patch_changes_only_what_is_sent_and_message_field_by_field(api: TestClient) -> None:
    created = create(
        api, "triggered_broadcast", message={**MESSAGE, "reply_to": "help@acme.example"}
    )

    response = api.patch(
        f"{C}/{created['id']}",
        json={"name": "Renamed", "message": {"subject": "New {{ trigger.x }}", "reply_to": None}},
    )

    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["name"] == "Renamed"
    assert updated["message"]["subject"] == "New {{ trigger.x }}"
    assert updated["message"]["reply_to"] is None
    assert updated["message"]["text"] == MESSAGE["text"]
    assert updated["updated_at"] > created["updated_at"]


def test_patch_state_activates_and_pauses(api: TestClient) -> None:
    created = create(api, "event_triggered")

    activated = api.patch(f"{C}/{created['id']}", json={"state": "active"})
    paused = api.patch(f"{C}/{created['id']}", json={"state": "paused"})

    assert activated.json()["state"] == "active"
    assert paused.json()["state"] == "paused"


@pytest.mark.parametrize(
    ("change", "status", "code", "fragment"),
    [
        ({"type": "newsletter"}, 422, "invalid_request", "type cannot be changed"),
        ({"name": None}, 422, "invalid_request", "name cannot be null"),
        ({"message": {"from": None}}, 422, "invalid_request", "from cannot be null"),
        ({"message": {"text": "{% for %}"}}, 422, "template_syntax", "line 1, column 4"),
        ({"message": {"text": None}}, 422, "invalid_request", "needs a body"),
        ({"state": "sent"}, 422, "invalid_request", "state"),
        ({"trigger": {"event_name": "x", "filter": {"not": 1}}}, 422, "invalid_conditions", ""),
        ({"audience": {"all": True}}, 422, "invalid_request", "audience does not apply"),
        ({"frequency": "sometimes"}, 422, "invalid_request", "frequency"),
    ],
)
def test_bad_patches_are_refused_and_change_nothing(
    api: TestClient, change: dict[str, Any], status: int, code: str, fragment: str
) -> None:
    created = create(api, "event_triggered")

    response = api.patch(f"{C}/{created['id']}", json=change)

    assert_error(response, status, code, fragment)
    after = api.get(f"{C}/{created['id']}").json()
    assert {k: v for k, v in after.items() if k != "counts"} == {
        k: v for k, v in created.items() if k != "counts"
    }


def test_a_newsletters_state_is_not_set_by_hand(api: TestClient) -> None:
    created = create(api, "newsletter")

    response = api.patch(f"{C}/{created['id']}", json={"state": "active"})

    assert_error(response, 422, "invalid_state", "/send")


# --- newsletter send ------------------------------------------------------------------------


def test_send_schedules_the_newsletter_once(api: TestClient) -> None:
    created = create(api, "newsletter")

    first = api.post(f"{C}/{created['id']}/send")
    second = api.post(f"{C}/{created['id']}/send", json={})

    assert first.status_code == 202, first.text
    assert first.json()["state"] == "scheduled"
    assert first.json()["send_at"] is not None
    assert_error(second, 409, "already_sent", "sent once")


def test_send_at_a_later_time_in_any_zone_is_stored_in_utc(api: TestClient) -> None:
    created = create(api, "newsletter")

    response = api.post(f"{C}/{created['id']}/send", json={"send_at": "2099-01-02T03:04:05+02:00"})

    assert response.status_code == 202, response.text
    assert response.json()["state"] == "scheduled"
    assert response.json()["send_at"] == "2099-01-02T01:04:05+00:00"


def test_a_sent_newsletter_can_no_longer_be_changed(api: TestClient, database: Database) -> None:
    created = create(api, "newsletter")
    api.post(f"{C}/{created['id']}/send")
    with database.session() as session:
        session.get_one(Campaign, created["id"]).state = "sent"

    response = api.patch(f"{C}/{created['id']}", json={"name": "Too late"})

    assert_error(response, 409, "already_sent")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"send_at": "tomorrow"}, "send_at"),
        ({"send_at": 1.5e300}, "send_at"),
        ({"send_at": "9999-12-31T23:00:00-05:00"}, "out of range"),
        ({"when": "now"}, "unknown field 'when'"),
        ([], ""),
    ],
)
def test_bad_send_bodies_are_refused(api: TestClient, payload: Any, fragment: str) -> None:
    created = create(api, "newsletter")

    response = api.post(f"{C}/{created['id']}/send", json=payload)

    assert_error(response, 422, "invalid_request", fragment)
    assert api.get(f"{C}/{created['id']}").json()["state"] == "draft"


def test_only_newsletters_are_sent(api: TestClient) -> None:
    created = create(api, "triggered_broadcast")

    response = api.post(f"{C}/{created['id']}/send")

    assert_error(response, 409, "wrong_campaign_type")


# --- broadcast triggers ---------------------------------------------------------------------


def active_broadcast(api: TestClient) -> dict[str, Any]:
    return create(api, "triggered_broadcast", state="active")


def trigger_count(database: Database) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(BroadcastTrigger)) or 0


def test_a_trigger_is_accepted_and_reported_as_pending(api: TestClient) -> None:
    broadcast = active_broadcast(api)

    response = api.post(
        f"{C}/{broadcast['id']}/triggers", json={"data": {"x": 1}, "ids": ["a", 2, "a"]}
    )

    assert response.status_code == 202, response.text
    trigger_id = response.json()["trigger_id"]
    status = api.get(f"{C}/{broadcast['id']}/triggers/{trigger_id}")
    assert status.status_code == 200
    assert status.json() | {"created_at": None} == {
        "id": trigger_id,
        "campaign_id": broadcast["id"],
        "state": "pending",
        "counts": {},
        "errors": [],
        "created_at": None,
        "finished_at": None,
    }


def test_at_most_one_trigger_per_broadcast_per_ten_seconds(api: TestClient) -> None:
    broadcast = active_broadcast(api)
    other = active_broadcast(api)
    path = f"{C}/{broadcast['id']}/triggers"
    context = api.app.state.context  # type: ignore[attr-defined]
    start = datetime.now(UTC).replace(tzinfo=None)
    try:
        api.app.state.context = replace(context, clock=lambda: start)  # type: ignore[attr-defined]
        assert api.post(path, json={}).status_code == 202
        limited = api.post(path, json={})
        assert api.post(f"{C}/{other['id']}/triggers", json={}).status_code == 202

        api.app.state.context = replace(  # type: ignore[attr-defined]
            context, clock=lambda: start + timedelta(seconds=7)
        )
        still = api.post(path, json={})
        api.app.state.context = replace(  # type: ignore[attr-defined]
            context, clock=lambda: start + timedelta(seconds=10)
        )
        allowed = api.post(path, json={})
    finally:
        api.app.state.context = context  # type: ignore[attr-defined]

    assert_error(limited, 429, "rate_limited", "10 seconds")
    assert limited.headers["Retry-After"] == "10"
    assert still.headers["Retry-After"] == "3"
    assert allowed.status_code == 202


@pytest.mark.parametrize(
    ("payload", "code", "fragment"),
    [
        ({"ids": ["a"], "emails": ["a@example.com"]}, "invalid_request", "at most one"),
        ({"recipients": {}, "per_user_data": [{"id": "a"}]}, "invalid_request", "at most one"),
        ({"ids": []}, "invalid_request", "ids"),
        ({"ids": [""]}, "invalid_request", "ids"),
        ({"ids": [True]}, "invalid_request", "ids"),
        ({"emails": ["not-an-address"]}, "invalid_request", "emails"),
        ({"per_user_data": [{"data": {}}]}, "invalid_request", "exactly one of id or email"),
        (
            {"per_user_data": [{"id": "a", "email": "a@example.com"}]},
            "invalid_request",
            "exactly one of id or email",
        ),
        (
            {"per_user_data": [{"id": "a"}, {"id": "a", "data": {"x": 1}}]},
            "invalid_request",
            "per_user_data[1]: id 'a' appears more than once",
        ),
        ({"data": []}, "invalid_request", "data"),
        ({"data": {"a": "\x00"}}, "invalid_request", "NUL"),
        ({"recipients": {"nope": 1}}, "invalid_conditions", "recipients: $: "),
        ({"recipients": 5}, "invalid_conditions", "recipients: $: "),
        (
            {"recipients": {"or": [{"attribute": {"field": "x", "operator": "zz", "value": 1}}]}},
            "invalid_conditions",
            "$.or[0].attribute.operator",
        ),
        ({"id_ignore_missing": "yes"}, "invalid_request", "id_ignore_missing"),
        ({"everyone": True}, "invalid_request", "unknown field 'everyone'"),
    ],
)
def test_bad_triggers_are_refused_and_not_stored(
    api: TestClient, database: Database, payload: dict[str, Any], code: str, fragment: str
) -> None:
    broadcast = active_broadcast(api)
    before = trigger_count(database)

    response = api.post(f"{C}/{broadcast['id']}/triggers", json=payload)

    assert_error(response, 422, code, fragment)
    assert trigger_count(database) == before
    assert api.post(f"{C}/{broadcast['id']}/triggers", json={}).status_code == 202


def test_a_trigger_with_nan_data_is_refused(api: TestClient) -> None:
    broadcast = active_broadcast(api)

    response = api.post(
        f"{C}/{broadcast['id']}/triggers",
        content=b'{"data": {"x": NaN}}',
        headers={"Content-Type": "application/json"},
    )

    assert_error(response, 422, "invalid_request", "finite")


def test_only_active_broadcasts_take_triggers(api: TestClient) -> None:
    draft = create(api, "triggered_broadcast")
    newsletter = create(api, "newsletter")

    assert_error(api.post(f"{C}/{draft['id']}/triggers", json={}), 409, "campaign_not_active")
    assert_error(api.post(f"{C}/{newsletter['id']}/triggers", json={}), 409, "wrong_campaign_type")


def test_a_trigger_of_another_broadcast_is_not_found(api: TestClient) -> None:
    one, two = active_broadcast(api), active_broadcast(api)
    trigger_id = api.post(f"{C}/{one['id']}/triggers", json={}).json()["trigger_id"]

    response = api.get(f"{C}/{two['id']}/triggers/{trigger_id}")

    assert_error(response, 404, "not_found")


# --- another workspace ----------------------------------------------------------------------


def test_another_workspaces_campaigns_answer_404(make_api: ApiFactory) -> None:
    mine, theirs = make_api(), make_api(name="Other")
    newsletter = create(theirs, "newsletter")
    broadcast = create(theirs, "triggered_broadcast", state="active")
    trigger_id = theirs.post(f"{C}/{broadcast['id']}/triggers", json={}).json()["trigger_id"]

    responses = [
        mine.get(f"{C}/{newsletter['id']}"),
        mine.patch(f"{C}/{newsletter['id']}", json={"name": "Mine now"}),
        mine.post(f"{C}/{newsletter['id']}/send"),
        mine.post(f"{C}/{broadcast['id']}/triggers", json={}),
        mine.get(f"{C}/{broadcast['id']}/triggers/{trigger_id}"),
    ]

    for response in responses:
        assert_error(response, 404, "not_found")
    assert stored_campaigns(mine) == []
    assert theirs.get(f"{C}/{newsletter['id']}").json()["state"] == "draft"
    assert theirs.get(f"{C}/{newsletter['id']}").json()["name"] == "A newsletter"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{C}/0"),
        ("GET", f"{C}/99999999"),
        ("PATCH", f"{C}/2147483648"),
        ("POST", f"{C}/-5/send"),
        ("GET", f"{C}/1/triggers/99999999999"),
    ],
)
def test_unknown_and_out_of_range_ids(api: TestClient, method: str, path: str) -> None:
    response = api.request(method, path, json={} if method != "GET" else None)

    assert response.status_code in {404, 422}, response.text
    assert response.json()["error"]["code"] in {"not_found", "invalid_request"}
