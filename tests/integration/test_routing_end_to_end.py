"""Routing by campaign type (DESIGN §2, §8), end to end: configured through the REST API,
delivered by the real worker, and counted at the real SMTP servers that received the mail."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from integration_helpers import (
    CAMPAIGN_TYPES,
    add_local,
    delivery,
    queue,
    run_once,
    set_role,
    subjects,
)

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.localsmtp import LocalSMTPServer

Deliver = Callable[..., None]
StartSmtp = Callable[..., LocalSMTPServer]


def queue_each_type(api: TestClient) -> dict[str, int]:
    """One message of every campaign type; returns delivery ids by type."""
    return {campaign_type: queue(api, campaign_type)["id"] for campaign_type in CAMPAIGN_TYPES}


def test_design_example_three_servers_each_type_reaches_its_server_and_none_moves_newsletters(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    main, events, news = (start_smtp(name) for name in ("smtp-main", "smtp-events", "smtp-news"))
    one = add_local(api, main, role="all_emails")
    two = add_local(api, events, role="event_triggered")
    three = add_local(api, news, role="newsletters")

    ids = queue_each_type(api)
    deliver()

    assert subjects(main) == ["segment_triggered", "triggered_broadcast"]
    assert subjects(events) == ["event_triggered"]
    assert subjects(news) == ["newsletter"]
    expected = {
        "segment_triggered": (one["id"], "fallback"),
        "event_triggered": (two["id"], "specific"),
        "newsletter": (three["id"], "specific"),
        "triggered_broadcast": (one["id"], "fallback"),
    }
    for campaign_type, delivery_id in ids.items():
        record = delivery(api, delivery_id)
        assert record["status"] == "sent", record
        assert (record["smtp_server_id"], record["via"]) == expected[campaign_type]
        assert record["attempts"] == 1

    for smtp in (main, events, news):
        smtp.clear()
    set_role(api, three["id"], "none")
    ids = queue_each_type(api)
    deliver()

    assert subjects(main) == ["newsletter", "segment_triggered", "triggered_broadcast"]
    assert subjects(events) == ["event_triggered"]
    assert subjects(news) == []
    newsletter = delivery(api, ids["newsletter"])
    assert (newsletter["smtp_server_id"], newsletter["via"]) == (one["id"], "fallback")


def test_five_servers_with_every_specific_role_leave_the_all_emails_server_idle_but_required(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    roles = {
        "smtp-main": "all_emails",
        "smtp-segments": "segment_triggered",
        "smtp-events": "event_triggered",
        "smtp-news": "newsletters",
        "smtp-broadcasts": "triggered_broadcasts",
    }
    smtp = {name: start_smtp(name) for name in roles}
    servers = {name: add_local(api, smtp[name], role=role) for name, role in roles.items()}

    ids = queue_each_type(api)
    deliver()

    assert smtp["smtp-main"].messages == []
    assert subjects(smtp["smtp-segments"]) == ["segment_triggered"]
    assert subjects(smtp["smtp-events"]) == ["event_triggered"]
    assert subjects(smtp["smtp-news"]) == ["newsletter"]
    assert subjects(smtp["smtp-broadcasts"]) == ["triggered_broadcast"]
    for delivery_id in ids.values():
        record = delivery(api, delivery_id)
        assert record["status"] == "sent"
        assert record["via"] == "specific"
        assert record["smtp_server_id"] != servers["smtp-main"]["id"]

    main_id = servers["smtp-main"]["id"]
    to_none = api.patch(f"/v1/smtp_servers/{main_id}", json={"role": "none"})
    assert to_none.status_code == 409
    assert to_none.json()["error"]["code"] == "fallback_required"
    taken = api.patch(f"/v1/smtp_servers/{main_id}", json={"role": "newsletters"})
    assert taken.status_code == 409
    assert taken.json()["error"]["code"] == "role_taken"
    assert "smtp-news" in taken.json()["error"]["message"]


def test_route_is_resolved_at_send_time_so_queued_newsletters_follow_a_role_change(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    main, news = start_smtp("smtp-main"), start_smtp("smtp-news")
    one = add_local(api, main, role="all_emails")
    three = add_local(api, news, role="newsletters")
    queued = [queue(api, "newsletter", subject=f"issue {n}")["id"] for n in range(3)]

    set_role(api, three["id"], "none")
    deliver()

    assert news.messages == []
    assert subjects(main) == ["issue 0", "issue 1", "issue 2"]
    for delivery_id in queued:
        record = delivery(api, delivery_id)
        assert record["status"] == "sent"
        assert record["smtp_server_id"] == one["id"]
        assert record["via"] == "fallback"


def test_deferred_messages_move_to_the_fallback_when_their_server_is_set_to_none(
    api: TestClient,
    deliver: Deliver,
    start_smtp: StartSmtp,
    database: Database,
    settings: Settings,
) -> None:
    main = start_smtp("smtp-main")
    one = add_local(api, main, role="all_emails")
    # A newsletter server that is down: the first attempt is deferred, recorded against it.
    down = start_smtp("smtp-news")
    three = add_local(api, down, role="newsletters")
    down.stop()
    delivery_id = queue(api, "newsletter")["id"]

    assert run_once(database, settings) == 1
    deferred = delivery(api, delivery_id)
    assert deferred["status"] == "deferred"
    assert deferred["smtp_server_id"] == three["id"]

    set_role(api, three["id"], "none")
    deliver()

    record = delivery(api, delivery_id)
    assert record["status"] == "sent"
    assert (record["smtp_server_id"], record["via"]) == (one["id"], "fallback")
    assert record["attempts"] == 2
    assert subjects(main) == ["newsletter"]


def test_workspace_without_servers_defers_with_no_route_then_delivers_once_a_server_is_added(
    api: TestClient,
    deliver: Deliver,
    start_smtp: StartSmtp,
    database: Database,
    settings: Settings,
) -> None:
    ids = queue_each_type(api)

    assert run_once(database, settings) == len(ids)
    for delivery_id in ids.values():
        record = delivery(api, delivery_id)
        assert record["status"] == "deferred", record
        assert record["last_error"].startswith("no_route"), record
        assert record["smtp_server_id"] is None
    listed = api.get("/v1/deliveries", params={"status": "deferred"}).json()["data"]
    assert sorted(d["id"] for d in listed) == sorted(ids.values())

    main = start_smtp("smtp-main")
    server = add_local(api, main)  # the first server defaults to all_emails (R2)
    deliver()

    assert subjects(main) == sorted(CAMPAIGN_TYPES)
    for delivery_id in ids.values():
        record = delivery(api, delivery_id)
        assert record["status"] == "sent"
        assert (record["smtp_server_id"], record["via"]) == (server["id"], "fallback")
        assert record["last_error"] is None


def test_workspace_without_servers_uses_the_default_relay_when_configured(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    relay = start_smtp("default-relay")
    ids = queue_each_type(api)

    deliver(default_smtp_url=f"smtp://127.0.0.1:{relay.port}?security=none")

    assert subjects(relay) == sorted(CAMPAIGN_TYPES)
    for delivery_id in ids.values():
        record = delivery(api, delivery_id)
        assert record["status"] == "sent"
        assert record["via"] == "default_relay"
        assert record["smtp_server_id"] is None


def test_default_relay_is_not_used_once_the_workspace_has_a_server(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    relay, own = start_smtp("default-relay"), start_smtp("smtp-own")
    server = add_local(api, own)
    delivery_id = queue(api, "newsletter")["id"]

    deliver(default_smtp_url=f"smtp://127.0.0.1:{relay.port}?security=none")

    assert relay.messages == []
    assert subjects(own) == ["newsletter"]
    record = delivery(api, delivery_id)
    assert (record["smtp_server_id"], record["via"]) == (server["id"], "fallback")
