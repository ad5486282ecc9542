"""`/u/{token}`: the unsubscribe page, its button, RFC 8058 one-click, and its errors as pages.

People are written to the database directly, as the people API would store them,
and links are made with the app's own secret key, as campaign mail carries them.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from postyard.api.app import create_app
from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery, Person
from postyard.secretbox import secret_box
from postyard.services import unsubscribe as service
from postyard.services.unsubscribe import UnsubscribeToken, make_token

ONE_CLICK = {
    "content": b"List-Unsubscribe=One-Click",
    "headers": {"Content-Type": "application/x-www-form-urlencoded"},
}
LONG_AGO = datetime(2020, 1, 1)


def add_person(
    database: Database,
    workspace_id: int,
    email: str | None = "jane.doe@example.com",
    **attributes: Any,
) -> int:
    with database.session() as session:
        person = Person(
            workspace_id=workspace_id,
            person_id=f"p-{time.perf_counter_ns()}",
            email=email,
            attributes=attributes,
            unsubscribed=False,
            created_at=LONG_AGO,
            updated_at=LONG_AGO,
        )
        session.add(person)
        session.flush()
        return person.id


def person(database: Database, pk: int) -> Person:
    with database.session() as session:
        return session.get_one(Person, pk)


def link(settings: Settings, workspace_id: int, person_pk: int, campaign_id: int | None = 1) -> str:
    token = UnsubscribeToken(workspace_id, person_pk, campaign_id)
    return f"/u/{make_token(secret_box(settings), token)}"


def tampered(path: str) -> str:
    return path[:-1] + ("A" if path[-1] != "A" else "B")


def text_of(response: httpx.Response) -> str:
    """The page's words, tags removed and spaces collapsed, for assertions on what it says."""
    return " ".join(re.sub(r"<[^>]+>", " ", response.text).split())


def assert_page(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<!doctype html>")
    assert "<script" not in response.text.lower()
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.fixture
def web(app_client: TestClient) -> TestClient:
    """A browser or a mail client: no API key, no cookies."""
    return app_client


def test_page_names_the_masked_address_and_offers_a_button(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    response = web.get(link(settings, api.workspace_id, pk))  # type: ignore[attr-defined]
    assert_page(response, 200)
    assert "j***@example.com" in response.text
    assert "jane.doe" not in response.text
    assert "Unsubscribe from Acme?" in text_of(response)
    form = re.search(r"<form\b[^>]*>", response.text)
    assert form is not None
    assert 'method="post"' in form[0]
    assert "action=" not in form[0]  # posts back to the very URL of the page
    assert re.search(r'<button type="submit">\s*Unsubscribe\s*</button>', response.text)
    assert '<html lang="en">' in response.text
    assert 'name="viewport"' in response.text


def test_opening_the_page_changes_nothing(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    """Link scanners and prefetchers open links: only the POST unsubscribes."""
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    path = link(settings, api.workspace_id, pk)  # type: ignore[attr-defined]
    assert web.get(path).status_code == 200
    assert web.head(path).status_code == 200
    stored = person(database, pk)
    assert stored.unsubscribed is False
    assert "unsubscribed" not in stored.attributes
    assert stored.updated_at == LONG_AGO


def test_pressing_the_button_unsubscribes(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id, plan="gold")  # type: ignore[attr-defined]
    before = utcnow()
    response = web.post(link(settings, api.workspace_id, pk))  # type: ignore[attr-defined]
    assert_page(response, 200)
    assert "You are unsubscribed" in text_of(response)
    assert "j***@example.com will get no more emails from Acme." in text_of(response)
    stored = person(database, pk)
    assert stored.unsubscribed is True
    assert stored.attributes == {"plan": "gold"}  # `unsubscribed` lives in its column
    assert stored.updated_at >= before - timedelta(seconds=1)


def test_unsubscribing_is_what_the_people_api_and_segments_see(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    """As `PUT /people` with `unsubscribed: true` would: the person leaves a segment of the
    subscribed and enters one of the unsubscribed at once."""
    put = api.put("/v1/people/jane", json={"email": "jane@example.com", "plan": "gold"})
    assert put.status_code in {200, 201}, put.text
    subscribed = segment(api, "Subscribed", False)
    unsubscribed = segment(api, "Unsubscribed", True)
    assert members(api, subscribed) == ["jane"]
    assert members(api, unsubscribed) == []
    with database.session() as session:
        pk = session.scalars(
            select(Person.id).where(
                Person.workspace_id == api.workspace_id,  # type: ignore[attr-defined]
                Person.person_id == "jane",
            )
        ).one()
    assert web.post(link(settings, api.workspace_id, pk), **ONE_CLICK).status_code == 200  # type: ignore[attr-defined]
    assert members(api, subscribed) == []
    assert members(api, unsubscribed) == ["jane"]
    shown = api.get("/v1/people/jane")
    assert shown.status_code == 200, shown.text
    assert shown.json()["unsubscribed"] is True
    assert shown.json()["attributes"] == {"plan": "gold"}


def segment(client: TestClient, name: str, unsubscribed: bool) -> int:
    condition = {"attribute": {"field": "unsubscribed", "operator": "eq", "value": unsubscribed}}
    response = client.post("/v1/segments", json={"name": name, "conditions": condition})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def members(client: TestClient, segment_id: int) -> list[str]:
    response = client.get(f"/v1/segments/{segment_id}/members")
    assert response.status_code == 200, response.text
    return [member["person_id"] for member in response.json()["data"]]


def test_one_click_post_unsubscribes_without_cookies_or_credentials(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    path = link(settings, api.workspace_id, pk)  # type: ignore[attr-defined]
    response = web.post(path, **ONE_CLICK)
    assert_page(response, 200)
    assert "authorization" not in {name.lower() for name in response.request.headers}
    assert "cookie" not in {name.lower() for name in response.request.headers}
    assert "set-cookie" not in response.headers
    assert person(database, pk).unsubscribed is True


def test_unsubscribing_again_is_fine(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    path = link(settings, api.workspace_id, pk)  # type: ignore[attr-defined]
    assert web.post(path, **ONE_CLICK).status_code == 200
    first = person(database, pk)
    again = web.post(path)
    assert_page(again, 200)
    assert "You are unsubscribed" in text_of(again)
    assert person(database, pk).updated_at == first.updated_at  # nothing left to change
    shown = web.get(path)
    assert_page(shown, 200)
    assert "You are unsubscribed" in text_of(shown)
    assert "<form" not in shown.text


def test_links_from_any_campaign_and_none_work(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    path = link(settings, api.workspace_id, pk, campaign_id=None)  # type: ignore[attr-defined]
    assert web.post(path).status_code == 200
    assert person(database, pk).unsubscribed is True


def test_a_person_without_an_address_gets_a_page_without_one(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id, email=None)  # type: ignore[attr-defined]
    path = link(settings, api.workspace_id, pk)  # type: ignore[attr-defined]
    response = web.get(path)
    assert_page(response, 200)
    assert "We will stop sending you emails from Acme." in text_of(response)
    assert web.post(path).status_code == 200
    assert person(database, pk).unsubscribed is True


def test_names_and_addresses_are_escaped(
    make_api: Any, web: TestClient, database: Database, settings: Settings
) -> None:
    client = make_api(name="<b>Acme</b> & Co")
    pk = add_person(database, client.workspace_id, email="<i>@example.com")
    response = web.get(link(settings, client.workspace_id, pk))
    assert "<b>" not in response.text
    assert "&lt;b&gt;Acme&lt;/b&gt; &amp; Co" in response.text
    assert "&lt;***@example.com" in response.text


def test_queued_campaign_mail_for_the_person_is_suppressed(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    """Mail queued before the click must not go out after it; other mail is untouched."""
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    stored = person(database, pk)
    campaign_mail = add_delivery(database, stored, campaign_id=5, status="queued")
    retrying = add_delivery(database, stored, campaign_id=6, status="deferred")
    already_sent = add_delivery(database, stored, campaign_id=5, status="sent")
    test_message = add_delivery(database, stored, campaign_id=None, status="queued")
    assert web.post(link(settings, api.workspace_id, pk)).status_code == 200  # type: ignore[attr-defined]
    with database.session() as session:
        statuses = {d.id: (d.status, d.last_error) for d in session.scalars(select(Delivery))}
    assert statuses[campaign_mail] == ("suppressed", service.UNSUBSCRIBED)
    assert statuses[retrying] == ("suppressed", service.UNSUBSCRIBED)
    assert statuses[already_sent] == ("sent", None)
    assert statuses[test_message] == ("queued", None)


def add_delivery(database: Database, person: Person, campaign_id: int | None, status: str) -> int:
    now = utcnow()
    with database.session() as session:
        delivery = Delivery(
            workspace_id=person.workspace_id,
            campaign_type="newsletter",
            campaign_id=campaign_id,
            person_id=person.person_id,
            to_address=person.email,
            from_address="news@acme.example",
            subject="News",
            message_id=f"<{time.perf_counter_ns()}@acme.example>",
            status=status,
            next_attempt_at=now,
            expires_at=now + timedelta(days=3),
        )
        session.add(delivery)
        session.flush()
        return delivery.id


# --- links that do not name a person of theirs -------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_tampered_link_is_a_404_page(
    method: str, api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    path = tampered(link(settings, api.workspace_id, pk))  # type: ignore[attr-defined]
    response = web.request(method, path, **ONE_CLICK)
    assert_page(response, 404)
    assert "Link not recognised" in text_of(response)
    assert "example.com" not in response.text
    assert person(database, pk).unsubscribed is False


@pytest.mark.parametrize(
    "path",
    [
        "/u/",
        "/u/nonsense",
        "/u/1.2.3",
        "/u/1.2.3.AAAAAAAAAAAAAAAAAAAAAAAA",
        "/u/1.2.3.s%C3%AFgnature",
        "/u/1.2.3.sig%00",
        "/u/%E2%80%AE",
        "/u/a/b/c",
        "/u/" + "9" * 5000,
    ],
)
def test_malformed_links_are_404_pages(web: TestClient, path: str) -> None:
    assert_page(web.get(path), 404)
    assert_page(web.post(path, **ONE_CLICK), 404)


def test_a_link_signed_under_another_key_is_a_404_page(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    other = Settings(database_url=settings.database_url, secret_key="another key entirely")
    response = web.post(link(other, api.workspace_id, pk))  # type: ignore[attr-defined]
    assert_page(response, 404)
    assert person(database, pk).unsubscribed is False


def test_a_workspaces_link_cannot_unsubscribe_another_workspaces_person(
    make_api: Any, web: TestClient, database: Database, settings: Settings
) -> None:
    """A validly signed link whose person is not in its workspace names nobody."""
    ours, theirs = make_api(name="Ours"), make_api(name="Theirs")
    their_person = add_person(database, theirs.workspace_id, email="victim@theirs.example")
    path = link(settings, ours.workspace_id, their_person)
    shown = web.get(path)
    assert_page(shown, 200)
    assert "theirs.example" not in shown.text
    assert "Theirs" not in shown.text
    done = web.post(path, **ONE_CLICK)
    assert_page(done, 200)
    assert "theirs.example" not in done.text
    assert person(database, their_person).unsubscribed is False


def test_a_deleted_persons_link_says_it_is_done(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    path = link(settings, api.workspace_id, pk)  # type: ignore[attr-defined]
    with database.session() as session:
        session.execute(delete(Person).where(Person.id == pk))
    for response in (web.get(path), web.post(path, **ONE_CLICK), web.post(path)):
        assert_page(response, 200)
        assert "You will get no more emails from us." in text_of(response)
        assert "example.com" not in response.text
        assert "Acme" not in response.text


# --- errors are pages, not the API's JSON -------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_another_method_is_a_405_page(
    method: str, api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    response = web.request(method, link(settings, api.workspace_id, pk))  # type: ignore[attr-defined]
    assert_page(response, 405)
    assert response.headers["allow"] == "GET, HEAD, POST"
    assert person(database, pk).unsubscribed is False


def test_an_oversized_body_is_a_413_page(
    api: TestClient, web: TestClient, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    path = link(settings, api.workspace_id, pk)  # type: ignore[attr-defined]
    body = b"List-Unsubscribe=One-Click&pad=" + b"x" * settings.max_request_bytes
    response = web.post(path, content=body, headers=ONE_CLICK["headers"])
    assert_page(response, 413)
    assert person(database, pk).unsubscribed is False
    api_response = api.post("/v1/suppressions", content=body)
    assert api_response.status_code == 413
    assert api_response.json()["error"]["code"] == "payload_too_large"


def test_an_unexpected_error_is_a_500_page_without_details(
    api: TestClient,
    web: TestClient,
    database: Database,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr("postyard.api.unsubscribe.unsubscribe", broken)
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    response = web.post(link(settings, api.workspace_id, pk))  # type: ignore[attr-defined]
    assert_page(response, 500)
    assert "secret detail" not in response.text
    assert "Something went wrong" in text_of(response)


# --- over a real socket, as a mail provider's one-click request arrives -------------------------


@pytest.fixture
def live_server(settings: Settings, database: Database) -> Iterator[str]:
    """The app under uvicorn on a free port of 127.0.0.1, in a thread of its own."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, database), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


def test_one_click_over_real_http(
    api: TestClient, live_server: str, database: Database, settings: Settings
) -> None:
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    url = live_server + link(settings, api.workspace_id, pk)  # type: ignore[attr-defined]
    with httpx.Client(timeout=10) as client:
        response = client.post(url, **ONE_CLICK)
    assert_page(response, 200)
    assert person(database, pk).unsubscribed is True


def test_unsubscribing_through_the_people_api_suppresses_queued_campaign_mail_too(
    api: TestClient, database: Database
) -> None:
    """`PUT /people` with `unsubscribed: true` has the link's effect on waiting mail."""
    pk = add_person(database, api.workspace_id)  # type: ignore[attr-defined]
    stored = person(database, pk)
    campaign_mail = add_delivery(database, stored, campaign_id=5, status="queued")
    test_message = add_delivery(database, stored, campaign_id=None, status="queued")
    response = api.put(f"/v1/people/{stored.person_id}", json={"unsubscribed": True})
    assert response.status_code == 200, response.text
    with database.session() as session:
        statuses = {d.id: (d.status, d.last_error) for d in session.scalars(select(Delivery))}
    assert statuses[campaign_mail] == ("suppressed", service.UNSUBSCRIBED)
    assert statuses[test_message] == ("queued", None)
