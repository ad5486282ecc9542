"""TLS and AUTH against real SMTP servers (DESIGN §5): verified certificates, STARTTLS and
implicit TLS, logins, and passwords that never leave the places they belong."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from integration_helpers import add_local, delivery, queue, run_once

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.localsmtp import LocalSMTPServer

Deliver = Callable[..., None]
StartSmtp = Callable[..., LocalSMTPServer]

USER = "postyard-user"
PASSWORD = "s3cret-Pa55word-xyzzy"


@pytest.mark.parametrize(
    ("security", "implicit_tls"), [("starttls", False), ("tls", True)], ids=["starttls", "tls"]
)
def test_tls_server_verified_with_its_ca_bundle_receives_the_message_over_tls(
    api: TestClient,
    deliver: Deliver,
    start_smtp: StartSmtp,
    server_tls: ssl.SSLContext,
    ca_pem: str,
    security: str,
    implicit_tls: bool,
) -> None:
    smtp = start_smtp("smtp-tls", tls=server_tls, implicit_tls=implicit_tls)
    add_local(api, smtp, security=security, ca_bundle=ca_pem)
    delivery_id = queue(api, "newsletter")["id"]

    deliver()

    record = delivery(api, delivery_id)
    assert record["status"] == "sent", record
    [message] = smtp.messages
    assert message.tls is True
    assert message.subject == "newsletter"


@pytest.mark.parametrize(
    ("security", "implicit_tls"), [("starttls", False), ("tls", True)], ids=["starttls", "tls"]
)
def test_certificate_not_signed_by_a_trusted_ca_defers_the_message(
    api: TestClient,
    start_smtp: StartSmtp,
    server_tls: ssl.SSLContext,
    database: Database,
    settings: Settings,
    security: str,
    implicit_tls: bool,
) -> None:
    smtp = start_smtp("smtp-tls", tls=server_tls, implicit_tls=implicit_tls)
    add_local(api, smtp, security=security)  # no ca_bundle: the system store
    delivery_id = queue(api, "newsletter")["id"]

    assert run_once(database, settings) == 1

    record = delivery(api, delivery_id)
    assert record["status"] == "deferred", record
    assert "certificate verify failed" in record["last_error"].lower()
    assert smtp.messages == []


def test_starttls_server_does_not_receive_mail_when_configured_as_plain(
    api: TestClient,
    start_smtp: StartSmtp,
    server_tls: ssl.SSLContext,
    database: Database,
    settings: Settings,
) -> None:
    """A server that insists on STARTTLS refuses a `none` client: deferred, never sent plain."""
    smtp = start_smtp("smtp-tls", tls=server_tls)
    add_local(api, smtp, security="none")
    delivery_id = queue(api, "newsletter")["id"]

    run_once(database, settings)

    record = delivery(api, delivery_id)
    assert record["status"] == "deferred", record
    assert "530" in record["last_error"]
    assert smtp.messages == []


def test_server_requiring_auth_but_configured_without_credentials_defers_until_fixed(
    api: TestClient,
    deliver: Deliver,
    start_smtp: StartSmtp,
    database: Database,
    settings: Settings,
) -> None:
    """530 (authentication required) is about the session, not the message: deferred."""
    smtp = start_smtp("smtp-auth", auth=(USER, PASSWORD))
    server = add_local(api, smtp)
    delivery_id = queue(api, "newsletter")["id"]

    run_once(database, settings)

    record = delivery(api, delivery_id)
    assert record["status"] == "deferred", record
    assert "530" in record["last_error"]
    fixed = api.patch(
        f"/v1/smtp_servers/{server['id']}", json={"username": USER, "password": PASSWORD}
    )
    assert fixed.status_code == 200, fixed.text
    deliver()
    assert delivery(api, delivery_id)["status"] == "sent"
    assert [m.auth_user for m in smtp.messages] == [USER]


@pytest.mark.parametrize("with_tls", [False, True], ids=["plain", "starttls"])
def test_auth_with_username_and_password_delivers_as_that_user(
    api: TestClient,
    deliver: Deliver,
    start_smtp: StartSmtp,
    server_tls: ssl.SSLContext,
    ca_pem: str,
    with_tls: bool,
) -> None:
    smtp = start_smtp("smtp-auth", auth=(USER, PASSWORD), tls=server_tls if with_tls else None)
    tls_fields = {"security": "starttls", "ca_bundle": ca_pem} if with_tls else {}
    server = add_local(api, smtp, username=USER, password=PASSWORD, **tls_fields)
    assert server["has_password"] is True
    delivery_id = queue(api, "event_triggered")["id"]

    deliver()

    assert delivery(api, delivery_id)["status"] == "sent"
    [message] = smtp.messages
    assert message.auth_user == USER
    assert message.tls is with_tls


def test_wrong_password_defers_with_the_535_reply_and_never_fails_the_message(
    api: TestClient,
    deliver: Deliver,
    start_smtp: StartSmtp,
    database: Database,
    settings: Settings,
) -> None:
    smtp = start_smtp("smtp-auth", auth=(USER, PASSWORD))
    server = add_local(api, smtp, username=USER, password="not-the-password")
    delivery_id = queue(api, "newsletter")["id"]

    for attempt in (1, 2):
        assert run_once(database, settings, retry_base_seconds=0, retry_max_seconds=0) == 1
        record = delivery(api, delivery_id)
        assert record["status"] == "deferred", record
        assert record["attempts"] == attempt
        assert "535" in record["last_error"]
    assert smtp.messages == []

    fixed = api.patch(f"/v1/smtp_servers/{server['id']}", json={"password": PASSWORD})
    assert fixed.status_code == 200, fixed.text
    deliver()
    assert delivery(api, delivery_id)["status"] == "sent"
    assert [m.auth_user for m in smtp.messages] == [USER]


def test_password_appears_neither_in_worker_logs_nor_in_api_responses(
    api: TestClient,
    start_smtp: StartSmtp,
    database: Database,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    good = start_smtp("smtp-good", auth=(USER, PASSWORD))
    bad = start_smtp("smtp-bad", auth=(USER, "the-real-one"))
    responses = [
        api.post(
            "/v1/smtp_servers",
            json={
                "name": "smtp-good",
                "host": "127.0.0.1",
                "port": good.port,
                "security": "none",
                "username": USER,
                "password": PASSWORD,
                "role": "all_emails",
            },
        )
    ]
    good_id = responses[0].json()["id"]
    responses.append(
        api.post(
            "/v1/smtp_servers",
            json={
                "name": "smtp-bad",
                "host": "127.0.0.1",
                "port": bad.port,
                "security": "none",
                "username": USER,
                "password": PASSWORD,
                "role": "newsletters",
            },
        )
    )
    bad_id = responses[1].json()["id"]
    sent = queue(api, "event_triggered")["id"]
    refused = queue(api, "newsletter")["id"]

    assert run_once(database, settings) == 2
    responses += [
        api.get("/v1/smtp_servers"),
        api.get(f"/v1/smtp_servers/{good_id}"),
        api.patch(f"/v1/smtp_servers/{bad_id}", json={"password": PASSWORD, "name": "smtp-b"}),
        api.post(f"/v1/smtp_servers/{good_id}/test"),
        api.post(f"/v1/smtp_servers/{bad_id}/test"),
        api.get(f"/v1/deliveries/{sent}"),
        api.get(f"/v1/deliveries/{refused}"),
        api.get("/v1/deliveries"),
        api.get("/v1/routing"),
    ]

    assert delivery(api, sent)["status"] == "sent"
    assert "535" in delivery(api, refused)["last_error"]
    for response in responses:
        assert response.status_code < 400, response.text
        assert PASSWORD not in response.text, response.request.url
    # The SMTP servers' own logger ("mail.log", aiosmtpd) is the test's, not the product's.
    product_logs = [record for record in caplog.records if record.name != "mail.log"]
    assert any(record.name.startswith("postyard") for record in product_logs)
    for record in product_logs:
        assert PASSWORD not in record.getMessage(), record.name
