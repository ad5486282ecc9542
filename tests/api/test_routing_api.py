"""`GET /v1/routing`: the effective route of every campaign type and the servers left idle."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

# DESIGN §1, in its order.
CAMPAIGN_TYPES = ["segment_triggered", "event_triggered", "newsletter", "triggered_broadcast"]
ROUTE_KEYS = {"campaign_type", "smtp_server_id", "smtp_server_name", "via", "explanation"}
UNUSED_KEYS = {"smtp_server_id", "smtp_server_name", "role", "reason"}


@pytest.fixture
def relay_api(settings: Settings, database: Database) -> Iterator[TestClient]:
    """A workspace on an instance that has a default SMTP relay (POSTYARD_DEFAULT_SMTP_URL)."""
    relay_settings = dataclasses.replace(settings, default_smtp_url="smtp://relay.example.net:25")
    with database.session() as session:
        created = create_workspace(session, "Relayed", Plan.PREMIUM)
    app = create_app(relay_settings, database)
    headers = {"Authorization": f"Bearer {created.api_key}"}
    with TestClient(app, headers=headers) as client:
        yield client


def create(client: TestClient, name: str, **fields: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/smtp_servers", json={"name": name, "host": "smtp.example.com", **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


def routing(client: TestClient) -> dict[str, Any]:
    response = client.get("/v1/routing")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"routes", "unused_servers", "servers", "failover"}
    assert [line["campaign_type"] for line in body["routes"]] == CAMPAIGN_TYPES
    for line in body["routes"]:
        assert set(line) == ROUTE_KEYS
    for line in body["unused_servers"]:
        assert set(line) == UNUSED_KEYS
    return body


def by_type(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {line["campaign_type"]: line for line in body["routes"]}


def test_each_campaign_type_appears_once_with_its_server(api: TestClient) -> None:
    main = create(api, "smtp-main")
    news = create(api, "smtp-news", role="newsletters")
    lines = by_type(routing(api))
    assert {t: (line["smtp_server_id"], line["smtp_server_name"]) for t, line in lines.items()} == {
        "segment_triggered": (main["id"], "smtp-main"),
        "event_triggered": (main["id"], "smtp-main"),
        "newsletter": (news["id"], "smtp-news"),
        "triggered_broadcast": (main["id"], "smtp-main"),
    }


def test_routes_say_specific_or_fallback_and_explain_why(api: TestClient) -> None:
    create(api, "smtp-main")
    create(api, "smtp-events", role="event_triggered")
    lines = by_type(routing(api))
    assert {t: (line["via"], line["explanation"]) for t, line in lines.items()} == {
        "segment_triggered": ("fallback", "fallback: no server is set to Segment Triggered"),
        "event_triggered": ("specific", "specific: 'smtp-events' is set to Event Triggered"),
        "newsletter": ("fallback", "fallback: no server is set to Newsletters"),
        "triggered_broadcast": ("fallback", "fallback: no server is set to Triggered Broadcasts"),
    }


def test_a_server_set_to_none_is_unused_for_that_reason(api: TestClient) -> None:
    create(api, "smtp-main")
    spare = create(api, "smtp-spare")
    assert routing(api)["unused_servers"] == [
        {
            "smtp_server_id": spare["id"],
            "smtp_server_name": "smtp-spare",
            "role": "none",
            "reason": "set to None",
        }
    ]


def test_all_emails_server_is_unused_when_every_type_has_its_own(api: TestClient) -> None:
    main = create(api, "smtp-main")
    for role in ("segment_triggered", "event_triggered", "newsletters", "triggered_broadcasts"):
        create(api, f"smtp-{role}", role=role)
    body = routing(api)
    assert {line["via"] for line in body["routes"]} == {"specific"}
    assert body["unused_servers"] == [
        {
            "smtp_server_id": main["id"],
            "smtp_server_name": "smtp-main",
            "role": "all_emails",
            "reason": "All Emails, but every campaign type has a server of its own",
        }
    ]


def test_a_second_all_emails_server_is_unused_behind_the_primary(api: TestClient) -> None:
    create(api, "smtp-main")
    create(api, "smtp-backup", role="all_emails")
    create(api, "smtp-spare")
    body = routing(api)
    assert {line["smtp_server_name"] for line in body["routes"]} == {"smtp-main"}
    assert [(u["smtp_server_name"], u["reason"]) for u in body["unused_servers"]] == [
        ("smtp-backup", "All Emails, but 'smtp-main' comes first and is the primary fallback"),
        ("smtp-spare", "set to None"),
    ]


def test_unused_servers_are_listed_in_position_order(api: TestClient) -> None:
    create(api, "smtp-main")
    create(api, "spare-a")
    spare_b = create(api, "spare-b")
    api.patch(f"/v1/smtp_servers/{spare_b['id']}", json={"position": 1}).raise_for_status()
    names = [u["smtp_server_name"] for u in routing(api)["unused_servers"]]
    assert names == ["spare-b", "spare-a"]


def test_routing_follows_a_role_change_at_once(api: TestClient) -> None:
    create(api, "smtp-main")
    news = create(api, "smtp-news", role="newsletters")
    assert by_type(routing(api))["newsletter"]["smtp_server_name"] == "smtp-news"
    api.patch(f"/v1/smtp_servers/{news['id']}", json={"role": "none"}).raise_for_status()
    line = by_type(routing(api))["newsletter"]
    assert (line["smtp_server_name"], line["via"]) == ("smtp-main", "fallback")


def test_without_servers_or_relay_nothing_routes_and_says_no_route(api: TestClient) -> None:
    body = routing(api)
    assert body["unused_servers"] == []
    for line in body["routes"]:
        assert line["smtp_server_id"] is None
        assert line["smtp_server_name"] is None
        assert line["via"] is None
        assert "no_route" in line["explanation"]


def test_deleting_the_last_server_leaves_no_route(api: TestClient) -> None:
    main = create(api, "smtp-main")
    assert api.delete(f"/v1/smtp_servers/{main['id']}").status_code == 204
    assert {line["via"] for line in routing(api)["routes"]} == {None}


def test_without_servers_the_default_relay_carries_everything(relay_api: TestClient) -> None:
    body = routing(relay_api)
    assert body["unused_servers"] == []
    for line in body["routes"]:
        assert line["via"] == "default_relay"
        assert line["smtp_server_id"] is None
        assert "default relay" in line["explanation"]
        assert "no_route" not in line["explanation"]


def test_custom_servers_take_precedence_over_the_default_relay(relay_api: TestClient) -> None:
    main = create(relay_api, "smtp-main")
    body = routing(relay_api)
    assert {(line["smtp_server_id"], line["via"]) for line in body["routes"]} == {
        (main["id"], "fallback")
    }
