"""`POST /v1/test_messages` and `GET /v1/deliveries`: queueing, reading back, filters, pages.

No worker runs here: a message stays `queued` (or `suppressed`). Where a test needs
deliveries a worker has already sent, it writes the outcome to the row directly,
as the worker would record it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import update

from postyard.api.app import create_app
from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery, DeliveryContent, Suppression
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

DELIVERY_KEYS = {
    "id",
    "campaign_type",
    "campaign_id",
    "person_id",
    "to",
    "from",
    "subject",
    "status",
    "smtp_server_id",
    "via",
    "route_reason",
    "attempts",
    "next_attempt_at",
    "last_error",
    "smtp_response",
    "message_id",
    "created_at",
    "sent_at",
}


def message(**fields: Any) -> dict[str, Any]:
    return {
        "campaign_type": "newsletter",
        "to": "bob@example.com",
        "from": "Acme News <news@acme.example>",
        "subject": "Hello",
        "text": "Hi Bob",
    } | fields


def queue(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/test_messages", json=message(**fields))
    assert response.status_code == 202, response.text
    return response.json()


def record_sent(database: Database, delivery_id: int, server_id: int, via: str) -> None:
    """Write the outcome a worker records after a server accepted the message."""
    with database.session() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(
                status="sent",
                smtp_server_id=server_id,
                route_via=via,
                attempts=1,
                smtp_response="250 2.0.0 Ok: queued",
                sent_at=utcnow(),
            )
        )


def suppress(database: Database, workspace_id: int, email: str) -> None:
    with database.session() as session:
        session.add(Suppression(workspace_id=workspace_id, email=email, reason="hard bounce"))


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [delivery["id"] for delivery in response.json()["data"]]


# --- one workspace with deliveries in every state, shared by the read-only tests --------------


@dataclass(frozen=True)
class Seeded:
    client: TestClient
    ids: dict[str, int]  # label -> delivery id
    servers: dict[str, int]  # name -> smtp server id


@pytest.fixture(scope="module")
def seeded(database_url: str) -> Iterator[Seeded]:
    """Five deliveries: two queued, two sent (by two servers), one suppressed."""
    settings = Settings(database_url=database_url, secret_key=Fernet.generate_key().decode())
    database = Database(database_url)
    with database.session() as session:
        created = create_workspace(session, "Seeded", Plan.PREMIUM)
    headers = {"Authorization": f"Bearer {created.api_key}"}
    with TestClient(create_app(settings, database), headers=headers) as client:
        main = client.post("/v1/smtp_servers", json={"name": "main", "host": "a.example"}).json()
        news = client.post(
            "/v1/smtp_servers", json={"name": "news", "host": "b.example", "role": "newsletters"}
        ).json()
        suppress(database, created.workspace_id, "gone@example.com")
        labels = {
            "queued-newsletter": message(campaign_type="newsletter"),
            "queued-event": message(campaign_type="event_triggered"),
            "sent-newsletter": message(campaign_type="newsletter"),
            "sent-segment": message(campaign_type="segment_triggered"),
            "suppressed-broadcast": message(
                campaign_type="triggered_broadcast", to="gone@example.com"
            ),
        }
        delivery_ids = {}
        for label, body in labels.items():
            response = client.post("/v1/test_messages", json=body)
            assert response.status_code == 202, response.text
            delivery_ids[label] = response.json()["id"]
        record_sent(database, delivery_ids["sent-newsletter"], news["id"], "specific")
        record_sent(database, delivery_ids["sent-segment"], main["id"], "fallback")
        yield Seeded(client, delivery_ids, {"main": main["id"], "news": news["id"]})
    database.dispose()


FILTERS = {
    "no-filter": (
        {},
        [
            "suppressed-broadcast",
            "sent-segment",
            "sent-newsletter",
            "queued-event",
            "queued-newsletter",
        ],
    ),
    "status-queued": ({"status": "queued"}, ["queued-event", "queued-newsletter"]),
    "status-sent": ({"status": "sent"}, ["sent-segment", "sent-newsletter"]),
    "status-suppressed": ({"status": "suppressed"}, ["suppressed-broadcast"]),
    "status-failed": ({"status": "failed"}, []),
    "type-newsletter": (
        {"campaign_type": "newsletter"},
        ["sent-newsletter", "queued-newsletter"],
    ),
    "type-event": ({"campaign_type": "event_triggered"}, ["queued-event"]),
    "server-news": ({"smtp_server_id": "news"}, ["sent-newsletter"]),
    "server-main": ({"smtp_server_id": "main"}, ["sent-segment"]),
    "server-unknown": ({"smtp_server_id": 2_000_000_000}, []),
    "type-and-status": (
        {"campaign_type": "newsletter", "status": "queued"},
        ["queued-newsletter"],
    ),
    "type-and-server": ({"campaign_type": "segment_triggered", "smtp_server_id": "news"}, []),
}


@pytest.mark.parametrize(("query", "expected"), FILTERS.values(), ids=FILTERS.keys())
def test_list_filters_newest_first(
    seeded: Seeded, query: dict[str, Any], expected: list[str]
) -> None:
    params = dict(query)
    if isinstance(params.get("smtp_server_id"), str):
        params["smtp_server_id"] = seeded.servers[params["smtp_server_id"]]
    response = seeded.client.get("/v1/deliveries", params=params)
    assert ids(response) == [seeded.ids[label] for label in expected]
    assert response.json()["next_cursor"] is None


@pytest.mark.parametrize(
    ("limit", "page_sizes"),
    [(1, [1, 1, 1, 1, 1]), (2, [2, 2, 1]), (4, [4, 1]), (5, [5]), (500, [5])],
)
def test_pages_walk_every_delivery_once_via_next_cursor(
    seeded: Seeded, limit: int, page_sizes: list[int]
) -> None:
    pages: list[list[int]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        response = seeded.client.get("/v1/deliveries", params=params)
        pages.append(ids(response))
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
        assert cursor == pages[-1][-1]
        params["before"] = cursor
        assert len(pages) <= 5, pages
    assert [len(page) for page in pages] == page_sizes
    walked = [delivery_id for page in pages for delivery_id in page]
    assert walked == sorted(seeded.ids.values(), reverse=True)


def test_pages_respect_the_filter(seeded: Seeded) -> None:
    first = seeded.client.get("/v1/deliveries", params={"status": "sent", "limit": 1})
    assert ids(first) == [seeded.ids["sent-segment"]]
    cursor = first.json()["next_cursor"]
    second = seeded.client.get(
        "/v1/deliveries", params={"status": "sent", "limit": 1, "before": cursor}
    )
    assert ids(second) == [seeded.ids["sent-newsletter"]]
    assert second.json()["next_cursor"] is None


def test_get_one_delivery_matches_its_list_entry(seeded: Seeded) -> None:
    listed = seeded.client.get("/v1/deliveries").json()["data"]
    for entry in listed:
        response = seeded.client.get(f"/v1/deliveries/{entry['id']}")
        assert response.status_code == 200, response.text
        detail = response.json()
        history = detail.pop("attempt_history")  # the one field the list leaves out
        assert detail == entry
        assert isinstance(history, list)
        assert set(entry) == DELIVERY_KEYS


def test_a_sent_delivery_shows_the_server_that_took_it(seeded: Seeded) -> None:
    sent = seeded.client.get(f"/v1/deliveries/{seeded.ids['sent-newsletter']}").json()
    assert sent["status"] == "sent"
    assert (sent["smtp_server_id"], sent["via"]) == (seeded.servers["news"], "specific")
    assert sent["attempts"] == 1
    assert sent["smtp_response"] == "250 2.0.0 Ok: queued"
    assert sent["sent_at"] is not None
    assert sent["next_attempt_at"] is None


# --- queueing --------------------------------------------------------------------------------


def test_test_message_is_accepted_as_queued(api: TestClient, database: Database) -> None:
    response = api.post(
        "/v1/test_messages",
        json=message(
            campaign_type="event_triggered",
            to="Bob@Example.COM",
            reply_to="Support <help@acme.example>",
            html="<p>Hi Bob</p>",
        ),
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == DELIVERY_KEYS
    assert {k: body[k] for k in ("campaign_type", "to", "from", "subject", "status")} == {
        "campaign_type": "event_triggered",
        "to": "Bob@example.com",
        "from": "Acme News <news@acme.example>",
        "subject": "Hello",
        "status": "queued",
    }
    assert body["attempts"] == 0
    assert body["smtp_server_id"] is None
    assert body["via"] is None
    assert body["sent_at"] is None
    assert body["last_error"] is None
    assert body["next_attempt_at"] is not None
    with database.session() as session:
        row = session.get_one(Delivery, body["id"])
        content = session.get_one(DeliveryContent, body["id"])
        assert (row.reply_to, content.text_body, content.html_body) == (
            "Support <help@acme.example>",
            "Hi Bob",
            "<p>Hi Bob</p>",
        )


def test_queueing_needs_no_smtp_server(api: TestClient) -> None:
    """Without any route the message is still accepted: it waits (R7), it is not refused."""
    assert api.get("/v1/smtp_servers").json()["data"] == []
    assert queue(api)["status"] == "queued"


@pytest.mark.parametrize(
    ("sender", "domain"),
    [
        ("news@acme.example", "acme.example"),
        ("Acme News <news@ACME.Example>", "acme.example"),
        ('"Acme, Inc." <news@mail.acme.example>', "mail.acme.example"),
        ("news@bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_message_id_is_at_the_domain_of_from(api: TestClient, sender: str, domain: str) -> None:
    message_id = queue(api, **{"from": sender})["message_id"]
    assert re.fullmatch(rf"<[^<>@\s]+@{re.escape(domain)}>", message_id), message_id
    assert message_id.isascii()


def test_message_id_is_stable_and_unique(api: TestClient) -> None:
    first = queue(api)
    second = queue(api)
    assert first["message_id"] != second["message_id"]
    assert api.get(f"/v1/deliveries/{first['id']}").json()["message_id"] == first["message_id"]
    listed = {d["id"]: d["message_id"] for d in api.get("/v1/deliveries").json()["data"]}
    assert listed == {first["id"]: first["message_id"], second["id"]: second["message_id"]}


def test_missing_delivery_is_not_found(api: TestClient) -> None:
    response = api.get("/v1/deliveries/2147483647")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_suppressed_address_is_recorded_as_suppressed_at_queue_time(
    api: TestClient, database: Database
) -> None:
    suppress(database, api.workspace_id, "bob@example.com")  # type: ignore[attr-defined]
    suppressed = queue(api, to="Bob@Example.com")
    assert suppressed["status"] == "suppressed"
    assert "suppression" in suppressed["last_error"]
    assert suppressed["next_attempt_at"] is None
    assert suppressed["attempts"] == 0
    detail = api.get(f"/v1/deliveries/{suppressed['id']}").json()
    assert detail == {**suppressed, "attempt_history": []}  # never attempted
    assert queue(api, to="alice@example.com")["status"] == "queued"


def test_suppression_is_per_workspace(make_api: Any, database: Database) -> None:
    owner, other = make_api(), make_api()
    suppress(database, owner.workspace_id, "bob@example.com")
    assert queue(owner)["status"] == "suppressed"
    assert queue(other)["status"] == "queued"
