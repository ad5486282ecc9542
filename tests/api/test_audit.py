"""`GET /v1/audit`: every configuration change, who made it, and the values before and after.

Each kind of change is made through the real API and read back through it; secrets are
looked for in the answer and in the stored rows; the last test answers the issue's
question "why did newsletters go out through server 1?" with a real worker and real
SMTP servers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.conftest import ApiFactory

from postyard.db.engine import Database
from postyard.db.models import AuditEvent, SmtpServer
from postyard.localsmtp import LocalSMTPServer
from postyard.secretbox import hash_api_key

PASSWORD = "s3cret-Pa55word!audit"
NEW_PASSWORD = "an0ther-Pa55word!audit"
MESSAGE = {"from": "Acme <news@acme.example>", "subject": "Hi", "text": "Hello"}


def events(client: TestClient, **filters: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/audit", params=filters)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json() if response.content else {}


def add_server(client: TestClient, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "host": "smtp.example.com", "security": "none", **fields}
    return ok(client.post("/v1/smtp_servers", json=body), 201)


def change(client: TestClient, server_id: int, **fields: Any) -> dict[str, Any]:
    return ok(client.patch(f"/v1/smtp_servers/{server_id}", json=fields))


def as_key(client: TestClient, name: str, scope: str = "admin") -> tuple[TestClient, int]:
    created = ok(client.post("/v1/keys", json={"name": name, "scope": scope}), 201)
    other = TestClient(client.app, headers={"Authorization": f"Bearer {created['key']}"})
    return other, created["id"]


def moves(found: list[dict[str, Any]]) -> list[tuple[str, str, Any, Any]]:
    """(action, object id, position before, position after), oldest first."""
    return [
        (
            event["action"],
            event["object_id"],
            (event["before"] or {}).get("position"),
            (event["after"] or {}).get("position"),
        )
        for event in reversed(found)
    ]


# --- Each kind of change ---------------------------------------------------------------------


def test_a_server_change_names_the_key_that_made_it_and_its_values_before_and_after(
    api: TestClient,
) -> None:
    ops, ops_id = as_key(api, "ops-laptop")
    server = add_server(ops, "smtp-main", port=2525)
    change(ops, server["id"], host="smtp2.example.com")

    edited, created = events(api, object_type="smtp_server")
    assert created["action"] == "create"
    assert (created["actor"], created["api_key_id"]) == ("ops-laptop", ops_id)
    assert created["object_id"] == str(server["id"])
    assert created["before"] is None
    assert created["after"]["name"] == "smtp-main"
    assert created["after"]["role"] == "all_emails"
    assert created["after"]["port"] == 2525
    assert edited["action"] == "update"
    assert edited["before"]["host"] == "smtp.example.com"
    assert edited["after"]["host"] == "smtp2.example.com"
    assert edited["changed"] == ["host"]
    assert edited["occurred_at"] >= created["occurred_at"]


def test_a_role_change_is_its_own_action_with_the_old_and_new_role(api: TestClient) -> None:
    add_server(api, "smtp-main")
    news = add_server(api, "smtp-news", role="newsletters")
    change(api, news["id"], role="none")

    (event,) = events(api, action="role_change")
    assert event["object_id"] == str(news["id"])
    assert (event["before"]["role"], event["after"]["role"]) == ("newsletters", "none")
    assert event["changed"] == ["role"]
    assert event["actor"] == "default"


def test_moving_a_server_records_it_and_each_server_it_displaces(api: TestClient) -> None:
    one, two, three = (add_server(api, name)["id"] for name in ("one", "two", "three"))
    change(api, three, position=1)

    assert moves(events(api, object_type="smtp_server", limit=3)) == [
        ("update", str(three), 3, 1),
        ("reorder", str(one), 1, 2),
        ("reorder", str(two), 2, 3),
    ]


def test_deleting_a_server_keeps_its_last_configuration_and_the_moves_it_causes(
    api: TestClient,
) -> None:
    one = add_server(api, "one")["id"]
    two = add_server(api, "two", role="all_emails")["id"]
    three = add_server(api, "three")["id"]
    ok(api.delete(f"/v1/smtp_servers/{one}"), 204)

    deleted, *reordered = reversed(events(api, object_type="smtp_server", limit=3))
    assert (deleted["action"], deleted["object_id"]) == ("delete", str(one))
    assert deleted["before"]["name"] == "one" and deleted["after"] is None
    assert moves(list(reversed(reordered))) == [
        ("reorder", str(two), 2, 1),
        ("reorder", str(three), 3, 2),
    ]


def test_campaign_creation_edits_state_changes_send_and_trigger_are_recorded(
    api: TestClient,
) -> None:
    newsletter = ok(
        api.post(
            "/v1/campaigns",
            json={
                "name": "News",
                "type": "newsletter",
                "audience": {"all": True},
                "message": MESSAGE,
            },
        ),
        201,
    )["id"]
    ok(api.patch(f"/v1/campaigns/{newsletter}", json={"name": "October news"}))
    ok(api.post(f"/v1/campaigns/{newsletter}/send"), 202)
    broadcast = ok(
        api.post(
            "/v1/campaigns",
            json={"name": "Alert", "type": "triggered_broadcast", "message": MESSAGE},
        ),
        201,
    )["id"]
    ok(api.patch(f"/v1/campaigns/{broadcast}", json={"state": "active"}))
    trigger = ok(api.post(f"/v1/campaigns/{broadcast}/triggers", json={}), 202)["trigger_id"]
    ok(api.patch(f"/v1/campaigns/{broadcast}", json={"state": "paused"}))

    found = list(reversed(events(api, object_type="campaign")))
    assert [(e["action"], e["object_id"]) for e in found] == [
        ("create", str(newsletter)),
        ("update", str(newsletter)),
        ("send", str(newsletter)),
        ("create", str(broadcast)),
        ("state_change", str(broadcast)),
        ("trigger", str(broadcast)),
        ("state_change", str(broadcast)),
    ]
    _, renamed, sent, _, activated, triggered, paused = found
    assert (renamed["before"]["name"], renamed["after"]["name"]) == ("News", "October news")
    assert (sent["before"]["state"], sent["after"]["state"]) == ("draft", "scheduled")
    assert sent["before"]["send_at"] is None and sent["after"]["send_at"] is not None
    assert (activated["before"]["state"], activated["after"]["state"]) == ("draft", "active")
    assert triggered["after"] == {"trigger_id": trigger}
    assert (paused["before"]["state"], paused["after"]["state"]) == ("active", "paused")


def test_deleting_a_campaign_keeps_its_last_configuration(api: TestClient) -> None:
    body = {"name": "Welcome", "type": "event_triggered", "message": MESSAGE}
    campaign = ok(
        api.post("/v1/campaigns", json={**body, "trigger": {"event_name": "signed_up"}}), 201
    )
    ok(api.delete(f"/v1/campaigns/{campaign['id']}"), 204)

    deleted, _ = events(api, object_type="campaign", object_id=str(campaign["id"]))
    assert (deleted["action"], deleted["after"]) == ("delete", None)
    assert deleted["before"]["name"] == "Welcome"
    assert deleted["before"]["trigger"] == {"event_name": "signed_up"}


def test_creating_and_revoking_keys_is_recorded_without_the_key_or_its_hash(
    api: TestClient,
) -> None:
    created = ok(api.post("/v1/keys", json={"name": "backend", "scope": "track"}), 201)
    ok(api.delete(f"/v1/keys/{created['id']}"))
    ok(api.delete(f"/v1/keys/{created['id']}"))

    found = events(api, object_type="api_key", object_id=str(created["id"]))
    assert [event["action"] for event in found] == ["revoke", "create"]
    revoked, made = found
    assert made["after"] == {"name": "backend", "scope": "track", "revoked_at": None}
    assert revoked["before"]["revoked_at"] is None and revoked["after"]["revoked_at"]
    body = api.get("/v1/audit").text
    assert created["key"] not in body and hash_api_key(created["key"]) not in body


def test_turning_failover_on_is_recorded_once(api: TestClient) -> None:
    ok(api.patch("/v1/workspace", json={"failover": True}))
    ok(api.patch("/v1/workspace", json={"failover": True}))

    (event,) = events(api, object_type="workspace")
    assert event["object_id"] == str(api.workspace_id)  # type: ignore[attr-defined]
    assert (event["before"]["failover"], event["after"]["failover"]) == (False, True)
    assert event["changed"] == ["failover"]


def test_the_workspaces_first_key_is_recorded_as_made_by_the_cli(api: TestClient) -> None:
    (first,) = events(api)
    assert (first["actor"], first["api_key_id"]) == ("cli", None)
    assert (first["action"], first["object_type"]) == ("create", "api_key")
    assert first["after"]["name"] == "default"


# --- Secrets, refusals, changes that change nothing -----------------------------------------


def test_passwords_show_as_stars_and_neither_they_nor_their_ciphertext_are_stored(
    api: TestClient, database: Database
) -> None:
    server = add_server(api, "smtp-main", username="postyard", password=PASSWORD)
    with database.session() as session:
        first_ciphertext = session.get_one(SmtpServer, server["id"]).password_encrypted
    change(api, server["id"], password=NEW_PASSWORD)
    change(api, server["id"], password=None)
    with database.session() as session:
        stored = session.scalars(
            select(AuditEvent).where(AuditEvent.workspace_id == api.workspace_id)  # type: ignore[attr-defined]
        ).all()
        raw = json.dumps([[event.before, event.after] for event in stored])

    cleared, replaced, created = events(api, object_type="smtp_server")
    assert created["after"]["password"] == "***"
    assert (replaced["before"]["password"], replaced["after"]["password"]) == ("***", "*** (new)")
    assert replaced["changed"] == ["password"]
    assert (cleared["before"]["password"], cleared["after"]["password"]) == ("***", None)
    body = api.get("/v1/audit").text
    assert first_ciphertext
    for secret in (PASSWORD, NEW_PASSWORD, first_ciphertext):
        assert secret not in body
        assert secret not in raw
    assert "password_encrypted" not in body


def test_a_refused_change_records_nothing(api: TestClient) -> None:
    main = add_server(api, "smtp-main")["id"]
    news = add_server(api, "smtp-news", role="newsletters")["id"]
    other = add_server(api, "smtp-other")["id"]
    before = events(api)

    assert api.patch(f"/v1/smtp_servers/{other}", json={"role": "newsletters"}).status_code == 409
    assert api.patch(f"/v1/smtp_servers/{main}", json={"role": "none"}).status_code == 409
    assert api.delete(f"/v1/smtp_servers/{main}").status_code == 409
    assert api.patch(f"/v1/smtp_servers/{news}", json={"name": "smtp-main"}).status_code == 409
    assert api.delete("/v1/keys/999999").status_code == 404

    assert events(api) == before


def test_a_change_that_changes_nothing_is_not_an_event(api: TestClient) -> None:
    server = add_server(api, "smtp-main", port=587)
    before = events(api)

    change(api, server["id"], name="smtp-main", port=587, role="all_emails")

    assert events(api) == before


# --- Filters, pages, and who may read ------------------------------------------------------


def test_filters_narrow_by_object_action_and_time(api: TestClient) -> None:
    start = datetime.now(UTC)
    one = add_server(api, "one")["id"]
    two = add_server(api, "two")["id"]
    change(api, one, host="smtp2.example.com")
    change(api, two, role="newsletters")
    end = datetime.now(UTC)

    assert len(events(api)) == 5
    assert len(events(api, object_type="smtp_server")) == 4
    assert [e["action"] for e in events(api, object_type="smtp_server", object_id=str(two))] == [
        "role_change",
        "create",
    ]
    assert [e["object_id"] for e in events(api, action="role_change")] == [str(two)]
    assert len(events(api, since=start.isoformat(), until=end.isoformat())) == 4
    assert events(api, since=end.isoformat()) == []
    assert [e["object_type"] for e in events(api, until=start.isoformat())] == ["api_key"]


def test_times_with_a_zone_are_compared_in_utc(api: TestClient) -> None:
    add_server(api, "one")
    (event,) = events(api, object_type="smtp_server")
    moment = datetime.fromisoformat(event["occurred_at"])
    elsewhere = timezone(timedelta(hours=5, minutes=30))

    assert events(api, object_type="smtp_server", since=moment.astimezone(elsewhere).isoformat())
    later = (moment + timedelta(seconds=1)).astimezone(elsewhere).isoformat()
    assert events(api, object_type="smtp_server", since=later) == []


def test_pages_follow_the_cursor_to_the_oldest_event(api: TestClient) -> None:
    for name in ("one", "two", "three", "four", "five"):
        add_server(api, name)
    everything = [event["id"] for event in events(api)]

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"before": cursor} if cursor else {})
        page = ok(api.get("/v1/audit", params=params))
        seen += [event["id"] for event in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everything
    assert len(everything) == 6 and everything == sorted(everything, reverse=True)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("object_type=server", "object_type"),
        ("action=explode", "action"),
        ("since=yesterday", "since"),
        ("since=1764460800", "since"),
        ("until=2026-13-01T00:00:00", "until"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("before=first", "before"),
        ("object_id=" + "x" * 201, "object_id"),
        ("since=2026-01-02T00:00:00&until=2026-01-01T00:00:00", "until"),
    ],
)
def test_a_bad_filter_is_a_422_that_names_the_field(
    api: TestClient, query: str, field: str
) -> None:
    response = api.get(f"/v1/audit?{query}")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(field)


def test_a_workspace_sees_only_its_own_changes(make_api: ApiFactory) -> None:
    a, b = make_api(), make_api()
    server = add_server(a, "smtp-a")

    assert [event["actor"] for event in events(b)] == ["cli"]
    assert events(b, object_type="smtp_server") == []
    assert events(b, object_id=str(server["id"])) == []
    assert events(a, object_type="smtp_server")


def test_a_track_key_may_not_read_the_audit_trail(api: TestClient) -> None:
    track, _ = as_key(api, "mobile-app", scope="track")

    response = track.get("/v1/audit")

    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "scope"


# --- The question ------------------------------------------------------------------


def test_why_newsletters_went_through_server_one_is_answered_by_route_reason_and_audit(
    api: TestClient, deliver: Callable[..., None]
) -> None:
    """Newsletters have their own server until someone sets it to None; the next newsletter
    goes through the All Emails server, its route reason says why, and the trail says who
    moved the role away and when."""
    with LocalSMTPServer(name="smtp-main") as main, LocalSMTPServer(name="smtp-news") as news:
        one = add_server(api, "smtp-main", host="127.0.0.1", port=main.port, role="all_emails")
        three = add_server(api, "smtp-news", host="127.0.0.1", port=news.port, role="newsletters")
        test_message = {"campaign_type": "newsletter", "to": "reader@example.com", **MESSAGE}

        before = ok(api.post("/v1/test_messages", json=test_message), 202)["id"]
        deliver()
        marketer, _ = as_key(api, "marketing-laptop")
        change(marketer, three["id"], role="none")
        after = ok(api.post("/v1/test_messages", json=test_message), 202)["id"]
        deliver()

    earlier = ok(api.get(f"/v1/deliveries/{before}"))
    later = ok(api.get(f"/v1/deliveries/{after}"))
    assert (earlier["smtp_server_id"], earlier["via"]) == (three["id"], "specific")
    assert earlier["route_reason"] == "specific: 'smtp-news' was the server set to Newsletters"
    assert (later["status"], later["smtp_server_id"], later["via"]) == (
        "sent",
        one["id"],
        "fallback",
    )
    assert later["route_reason"] == (
        "fallback: no server was set to Newsletters, so it went to 'smtp-main', "
        "the primary All Emails server"
    )
    listed = {d["id"]: d["route_reason"] for d in ok(api.get("/v1/deliveries"))["data"]}
    assert listed == {before: earlier["route_reason"], after: later["route_reason"]}

    # "Yesterday afternoon": the window around the fallback delivery.
    sent_at = datetime.fromisoformat(later["sent_at"])
    window = {
        "since": (sent_at - timedelta(hours=1)).isoformat(),
        "until": (sent_at + timedelta(seconds=1)).isoformat(),
    }
    (role_change,) = events(api, action="role_change", **window)
    assert role_change["object_id"] == str(three["id"])
    assert role_change["actor"] == "marketing-laptop"
    assert (role_change["before"]["role"], role_change["after"]["role"]) == ("newsletters", "none")
    changed_at = datetime.fromisoformat(role_change["occurred_at"])
    assert datetime.fromisoformat(earlier["sent_at"]) <= changed_at <= sent_at
