"""POST /v1/smtp_servers/{id}/test walks a real SMTP session step by step and reports it."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from integration_helpers import add_local, add_server

from postyard.localsmtp import LocalSMTPServer, free_port

StartSmtp = Callable[..., LocalSMTPServer]

USER = "probe-user"
PASSWORD = "probe-Pa55word"


def run_test(api: TestClient, server_id: int) -> dict[str, Any]:
    response = api.post(f"/v1/smtp_servers/{server_id}/test")
    assert response.status_code == 200, response.text
    return response.json()


def step_names(report: dict[str, Any]) -> list[str]:
    return [step["step"] for step in report["steps"]]


def test_starttls_and_auth_server_passes_every_step_with_the_server_replies(
    api: TestClient, start_smtp: StartSmtp, server_tls: ssl.SSLContext, ca_pem: str
) -> None:
    smtp = start_smtp("smtp-secure", tls=server_tls, auth=(USER, PASSWORD))
    server = add_local(
        api, smtp, security="starttls", ca_bundle=ca_pem, username=USER, password=PASSWORD
    )

    report = run_test(api, server["id"])

    assert report["ok"] is True
    assert step_names(report) == ["connect", "ehlo", "starttls", "auth"]
    assert all(step["ok"] for step in report["steps"])
    connect, ehlo, starttls, auth = (step["reply"] for step in report["steps"])
    assert connect.startswith("220 ") and "smtp-secure" in connect
    assert ehlo.startswith("250 ")
    assert "STARTTLS" in ehlo.upper()
    assert starttls.startswith("220 ")
    assert auth.startswith("235 ")
    assert PASSWORD not in str(report)
    assert smtp.messages == []


def test_implicit_tls_server_starts_with_a_tls_connect_step(
    api: TestClient, start_smtp: StartSmtp, server_tls: ssl.SSLContext, ca_pem: str
) -> None:
    smtp = start_smtp("smtp-465", tls=server_tls, implicit_tls=True, auth=(USER, PASSWORD))
    server = add_local(
        api, smtp, security="tls", ca_bundle=ca_pem, username=USER, password=PASSWORD
    )

    report = run_test(api, server["id"])

    assert report["ok"] is True
    assert step_names(report) == ["connect (TLS)", "ehlo", "auth"]
    assert report["steps"][0]["reply"].startswith("220 ")


def test_plain_server_without_credentials_stops_after_ehlo(
    api: TestClient, start_smtp: StartSmtp
) -> None:
    server = add_local(api, start_smtp("smtp-plain"))

    report = run_test(api, server["id"])

    assert report["ok"] is True
    assert step_names(report) == ["connect", "ehlo"]


def test_wrong_password_fails_the_auth_step_with_the_535_reply(
    api: TestClient, start_smtp: StartSmtp, server_tls: ssl.SSLContext, ca_pem: str
) -> None:
    smtp = start_smtp("smtp-secure", tls=server_tls, auth=(USER, PASSWORD))
    server = add_local(
        api, smtp, security="starttls", ca_bundle=ca_pem, username=USER, password="wrong-one"
    )

    report = run_test(api, server["id"])

    assert report["ok"] is False
    assert step_names(report) == ["connect", "ehlo", "starttls", "auth"]
    assert [step["ok"] for step in report["steps"]] == [True, True, True, False]
    assert "535" in report["steps"][-1]["reply"]
    assert "wrong-one" not in str(report)


def test_nothing_listening_fails_the_connect_step_and_stops(api: TestClient) -> None:
    port = free_port()
    server = add_server(api, "smtp-nowhere", port, username=USER, password=PASSWORD)

    report = run_test(api, server["id"])

    assert report["ok"] is False
    assert step_names(report) == ["connect"]
    [connect] = report["steps"]
    assert connect["ok"] is False
    assert str(port) in connect["reply"]


def test_certificate_that_does_not_verify_fails_at_starttls_with_the_verification_error(
    api: TestClient, start_smtp: StartSmtp, server_tls: ssl.SSLContext
) -> None:
    smtp = start_smtp("smtp-secure", tls=server_tls, auth=(USER, PASSWORD))
    server = add_local(api, smtp, security="starttls", username=USER, password=PASSWORD)

    report = run_test(api, server["id"])

    assert report["ok"] is False
    assert step_names(report) == ["connect", "ehlo", "starttls"]
    assert [step["ok"] for step in report["steps"]] == [True, True, False]
    assert "certificate verify failed" in report["steps"][-1]["reply"].lower()


def test_implicit_tls_certificate_that_does_not_verify_fails_at_connect(
    api: TestClient, start_smtp: StartSmtp, server_tls: ssl.SSLContext
) -> None:
    smtp = start_smtp("smtp-465", tls=server_tls, implicit_tls=True)
    server = add_local(api, smtp, security="tls")

    report = run_test(api, server["id"])

    assert report["ok"] is False
    assert step_names(report) == ["connect (TLS)"]
    assert "certificate verify failed" in report["steps"][0]["reply"].lower()


def test_unknown_server_is_a_404(api: TestClient) -> None:
    response = api.post("/v1/smtp_servers/999999/test")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
