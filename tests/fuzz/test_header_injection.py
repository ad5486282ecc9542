"""Header injection end to end: a person attribute with CR/LF never becomes a header.

A person's attribute carries `\\r\\nBcc: victim@example.com` (and other line-break
variants); campaigns render it into the subject and the from header. Through the
real API, the jobs runner, the delivery worker and a real SMTP server
(`LocalSMTPServer`), the test checks that nothing of it reaches the wire as a
header (no Bcc, no extra recipient, not even the text) and that each such delivery
is `failed` with a `render_error`, while a person with a clean attribute in the
same campaign is delivered normally. A test message through `/v1/test_messages`
with a line break in a header field is refused at the API (422) and queues nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.localsmtp import LocalSMTPServer
from postyard.secretbox import secret_box
from postyard.services.jobs import Jobs
from postyard.services.runtime import Runtime

Deliver = Callable[..., None]
VICTIM = "victim@example.com"
# CRLF, bare LF, bare CR, and a blank line that would start the body early.
PAYLOADS = {
    "crlf": f"Ann\r\nBcc: {VICTIM}",
    "lf": f"Ann\nBcc: {VICTIM}",
    "cr": f"Ann\rBcc: {VICTIM}",
    "blank-line": f"Ann\r\n\r\nBcc: {VICTIM}",
    "folded": f"Ann\r\n Bcc: {VICTIM}",
}
CLEAN = "Bob"


@pytest.fixture
def smtp() -> Iterator[LocalSMTPServer]:
    with LocalSMTPServer(name="smtp-main") as server:
        yield server


def ok(response: Any) -> Any:
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


def people(api: TestClient) -> None:
    """One person per payload, and one with a clean name who must get the mail."""
    for label, name in PAYLOADS.items():
        ok(api.put(f"/v1/people/{label}", json={"email": f"{label}@example.com", "name": name}))
    ok(api.put("/v1/people/clean", json={"email": "clean@example.com", "name": CLEAN}))


def configure(api: TestClient, smtp: LocalSMTPServer) -> None:
    ok(
        api.post(
            "/v1/smtp_servers",
            json={
                "name": smtp.name,
                "host": "127.0.0.1",
                "port": smtp.port,
                "security": "none",
                "role": "all_emails",
            },
        )
    )


def deliveries(api: TestClient, campaign_id: int) -> dict[str, dict[str, Any]]:
    page = ok(api.get("/v1/deliveries", params={"campaign_id": campaign_id, "limit": 500}))
    return {delivery["person_id"]: delivery for delivery in page["data"]}


def assert_nothing_injected(smtp: LocalSMTPServer, campaign_id: int, api: TestClient) -> None:
    by_person = deliveries(api, campaign_id)
    assert set(by_person) == {*PAYLOADS, "clean"}
    for label in PAYLOADS:
        delivery = by_person[label]
        assert delivery["status"] == "failed", (label, delivery)
        assert delivery["last_error"].startswith("render_error"), (label, delivery)
    assert by_person["clean"]["status"] == "sent", by_person["clean"]

    [message] = smtp.wait_for(1)
    assert smtp.messages == [message], "only the clean person's message may go out"
    assert message.rcpt_tos == ("clean@example.com",)
    assert message.header("Bcc") is None
    assert VICTIM.encode() not in message.data
    assert [name for name, _ in message.headers].count("To") == 1


def test_an_attribute_with_a_line_break_in_an_event_triggered_subject_fails_to_render(
    api: TestClient, smtp: LocalSMTPServer, deliver: Deliver
) -> None:
    configure(api, smtp)
    campaign = ok(
        api.post(
            "/v1/campaigns",
            json={
                "name": "welcome",
                "type": "event_triggered",
                "state": "active",
                "trigger": {"event_name": "signed_up"},
                "message": {
                    "from": "Acme <news@acme.example>",
                    "subject": "Welcome, {{ customer.name }}",
                    "text": "Hello.",
                },
            },
        )
    )
    people(api)
    for person_id in [*PAYLOADS, "clean"]:
        ok(api.post(f"/v1/people/{person_id}/events", json={"name": "signed_up"}))
    deliver()
    assert_nothing_injected(smtp, campaign["id"], api)
    assert smtp.messages[0].subject == f"Welcome, {CLEAN}"


def test_an_attribute_with_a_line_break_in_a_newsletter_from_fails_to_render(
    api: TestClient,
    smtp: LocalSMTPServer,
    deliver: Deliver,
    database: Database,
    settings: Settings,
) -> None:
    configure(api, smtp)
    people(api)
    campaign = ok(
        api.post(
            "/v1/campaigns",
            json={
                "name": "news",
                "type": "newsletter",
                "audience": {"all": True},
                "message": {
                    "from": "{{ customer.name }} <news@acme.example>",
                    "subject": "News",
                    "text": "Hello.",
                },
            },
        )
    )
    ok(api.post(f"/v1/campaigns/{campaign['id']}/send", json={}))
    assert Jobs(database, Runtime(settings, secret_box(settings))).run_due() == 1
    deliver()
    assert_nothing_injected(smtp, campaign["id"], api)
    assert smtp.messages[0].header("From") == f"{CLEAN} <news@acme.example>"


@pytest.mark.parametrize("field", ["subject", "from", "reply_to"])
@pytest.mark.parametrize("payload", list(PAYLOADS), ids=list(PAYLOADS))
def test_a_test_message_with_a_line_break_in_a_header_is_refused(
    api: TestClient, field: str, payload: str
) -> None:
    value = PAYLOADS[payload]
    if field != "subject":
        value = f"{value} <news@acme.example>"
    body = {
        "campaign_type": "newsletter",
        "to": "reader@example.com",
        "from": "Acme <news@acme.example>",
        "subject": "Hello",
        "text": "Hello.",
        field: value,
    }
    response = api.post("/v1/test_messages", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert ok(api.get("/v1/deliveries"))["data"] == []
