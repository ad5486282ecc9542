"""Nothing secret leaves Postyard: not in logs, error messages, tracebacks, `/metrics`, API
responses or web pages.

One realistic session uses every secret the instance holds: the secret key, API keys (an
admin and a track key besides the workspace's first), SMTP passwords over STARTTLS and
plain AUTH, a password the server rejects, a default relay with a password in its URL;
it configures, tests connections, sends, fails, lists everything and browses the web UI.
Every response and every log record (at DEBUG, tracebacks included) is kept, and none
may contain a secret, nor the base64 forms SMTP AUTH puts passwords in.

The only answers allowed to carry a secret are the two that must: the one creating an API
key shows it once. The in-process test SMTP servers' own log (aiosmtpd's `mail.log`) is
the remote side's and is left out.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from integration_helpers import FROM

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.delivery.endpoints import default_relay
from postyard.delivery.worker import Worker
from postyard.localsmtp import LocalSMTPServer
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

StartSmtp = Callable[..., LocalSMTPServer]

USER = "postyard-user"
SMTP_PASSWORD = "smtp-Pa55-correct-horse"
WRONG_PASSWORD = "smtp-Pa55-wrong-battery"
RELAY_PASSWORD = "relay-Pa55-staple-xyzzy"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
REMOTE_SIDE_LOGGERS = ("mail.log",)
"""aiosmtpd's logger: the test SMTP servers are the remote side, not Postyard."""


def secret_forms(password: str) -> list[str]:
    """A password as it may travel in SMTP AUTH: itself, AUTH LOGIN's base64 of it, and
    AUTH PLAIN's base64 of the user and it."""
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0{USER}\0{password}".encode()).decode(),
    ]


@dataclass
class Transcript:
    """Every answer the session received, labelled by its request."""

    answers: list[tuple[str, str]] = field(default_factory=list)

    def record(self, response: httpx.Response) -> None:
        response.read()
        request = response.request
        label = f"{request.method} {request.url.path}?{request.url.query.decode()}"
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.answers.append((label, f"{response.status_code}\n{headers}\n\n{response.text}"))


class Session:
    """An API client and a signed-in browser for one workspace, both recorded."""

    def __init__(self, app: Any, api_key: str, transcript: Transcript) -> None:
        self.api = TestClient(app, headers={"Authorization": f"Bearer {api_key}"})
        self.web = TestClient(app)
        for client in (self.api, self.web):
            client.event_hooks = {"response": [transcript.record]}
        self.api_key = api_key

    def ok(self, response: httpx.Response, status: int = 200) -> Any:
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def sign_in(self, api_key: str) -> httpx.Response:
        page = self.web.get("/login")
        return self.web.post(
            "/login",
            data={"csrf_token": CSRF.search(page.text)[1], "api_key": api_key, "next": ""},
            follow_redirects=False,
        )

    def web_csrf(self) -> str:
        return CSRF.search(self.web.get("/smtp").text)[1]

    def close(self) -> None:
        self.api.close()
        self.web.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record of every logger, at DEBUG."""
    caplog.set_level(logging.DEBUG)
    for name in ("postyard", "uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def run_worker(database: Database, settings: Settings, app: Any) -> None:
    worker = Worker(database, settings, metrics=app.state.metrics)

    async def rounds() -> None:
        try:
            while await worker.run_once():
                pass
        finally:
            await worker.pools.close()

    asyncio.run(rounds())


def every_get(session: Session, ids: dict[str, int | str]) -> None:
    """GET every operation of the OpenAPI document, with ids of the session's own objects."""
    document = session.api.get("/openapi.json").json()
    for path, item in document["paths"].items():
        if "get" not in item:
            continue
        concrete = re.sub(r"\{(\w+)\}", lambda match: str(ids.get(match[1], 1)), path)
        session.api.get(concrete)


def test_no_secret_in_logs_errors_metrics_responses_or_pages(
    settings: Settings,
    database: Database,
    start_smtp: StartSmtp,
    server_tls: ssl.SSLContext,
    ca_pem: str,
    logs: pytest.LogCaptureFixture,
) -> None:
    secure = start_smtp("smtp-secure", tls=server_tls, auth=(USER, SMTP_PASSWORD))
    plain = start_smtp("smtp-plain", auth=(USER, SMTP_PASSWORD))
    settings = replace(
        settings,
        default_smtp_url=f"smtp://{USER}:{RELAY_PASSWORD}@127.0.0.1:{plain.port}?security=none",
    )
    assert settings.secret_key
    app = create_app(settings, database)
    transcript = Transcript()
    with database.session() as db:
        first_key = create_workspace(db, "Acme", Plan.PREMIUM).api_key
        relay_key = create_workspace(db, "Relayed", Plan.STANDARD).api_key
    acme = Session(app, first_key, transcript)
    relayed = Session(app, relay_key, transcript)

    # API keys: shown once, by the answer that creates them.
    new_keys = {}
    for scope in ("admin", "track"):
        created = acme.ok(
            acme.api.post("/v1/keys", json={"name": f"{scope}-key", "scope": scope}), 201
        )
        new_keys[scope] = created["key"]
    key_answers = {label for label, _ in transcript.answers if label.startswith("POST /v1/keys")}

    # SMTP servers with passwords: one right, one the server rejects.
    good = acme.ok(
        acme.api.post(
            "/v1/smtp_servers",
            json={
                "name": "secure",
                "host": "127.0.0.1",
                "port": secure.port,
                "security": "starttls",
                "ca_bundle": ca_pem,
                "username": USER,
                "password": SMTP_PASSWORD,
            },
        ),
        201,
    )
    bad = acme.ok(
        acme.api.post(
            "/v1/smtp_servers",
            json={
                "name": "plain",
                "host": "127.0.0.1",
                "port": plain.port,
                "security": "none",
                "username": USER,
                "password": WRONG_PASSWORD,
                "role": "newsletters",
            },
        ),
        201,
    )
    acme.ok(acme.api.patch(f"/v1/smtp_servers/{good['id']}", json={"password": SMTP_PASSWORD}))
    # Refused input carrying a password: the error names the problem, not the password.
    refused = [
        acme.api.post(
            "/v1/smtp_servers",
            json={"name": "secure", "host": "127.0.0.1", "password": SMTP_PASSWORD},
        ),
        acme.api.post(
            "/v1/smtp_servers",
            json={"name": "x", "host": "127.0.0.1", "password": [SMTP_PASSWORD]},
        ),
        acme.api.patch(
            f"/v1/smtp_servers/{bad['id']}", json={"password": SMTP_PASSWORD, "port": "x"}
        ),
        acme.api.post(
            "/v1/smtp_servers",
            content=f'{{"password": "{SMTP_PASSWORD}", '.encode(),
            headers={"Content-Type": "application/json"},
        ),
    ]
    assert [r.status_code for r in refused] == [409, 422, 422, 400]

    # Connection tests: through AUTH, and failing at AUTH.
    probes = [acme.ok(acme.api.post(f"/v1/smtp_servers/{s['id']}/test")) for s in (good, bad)]
    assert [p["ok"] for p in probes] == [True, False]
    assert probes[1]["steps"][-1]["step"] == "auth"

    # Mail: sent over STARTTLS+AUTH, refused at AUTH, and through the relay's wrong password.
    def queue_message(session: Session, campaign_type: str) -> int:
        body = {"campaign_type": campaign_type, "to": "reader@example.com", "from": FROM}
        body |= {"subject": campaign_type, "text": "Hello."}
        return session.ok(session.api.post("/v1/test_messages", json=body), 202)["id"]

    sent = queue_message(acme, "segment_triggered")
    rejected = queue_message(acme, "newsletter")
    relay = queue_message(relayed, "newsletter")
    run_worker(database, settings, app)
    statuses = [acme.ok(acme.api.get(f"/v1/deliveries/{d}"))["status"] for d in (sent, rejected)]
    statuses.append(relayed.ok(relayed.api.get(f"/v1/deliveries/{relay}"))["status"])
    assert statuses == ["sent", "deferred", "deferred"]
    assert [m.auth_user for m in secure.messages] == [USER]
    assert plain.messages == []

    # Every listing and object, /metrics, and the web UI.
    every_get(acme, {"server_id": good["id"], "delivery_id": rejected, "person_id": "ada"})
    every_get(relayed, {"delivery_id": relay})
    acme.api.get("/metrics")
    assert acme.sign_in(new_keys["track"]).status_code == 403
    assert acme.sign_in("pk_" + "x" * 40).status_code == 401
    assert acme.sign_in(new_keys["admin"]).status_code == 303
    for page in ("/overview", "/smtp", "/deliveries", "/smtp/new", "/audit"):
        acme.web.get(page)
    for server in (good, bad):
        acme.web.get(f"/smtp/{server['id']}")
        acme.web.post(f"/smtp/{server['id']}/test", data={"csrf_token": acme.web_csrf()})
    acme.web.get(f"/deliveries/{rejected}")
    acme.web.post(
        "/smtp/new",
        data={
            "csrf_token": acme.web_csrf(),
            "name": "secure",
            "host": "127.0.0.1",
            "port": "587",
            "security": "starttls",
            "username": USER,
            "password": SMTP_PASSWORD,
        },
    )
    acme.close()
    relayed.close()

    secrets = {
        "the secret key": [settings.secret_key],
        "the first API key": [first_key],
        "the second workspace's API key": [relay_key],
        "the new admin key": [new_keys["admin"]],
        "the new track key": [new_keys["track"]],
        "the SMTP password": secret_forms(SMTP_PASSWORD),
        "the rejected SMTP password": secret_forms(WRONG_PASSWORD),
        "the relay's password": secret_forms(RELAY_PASSWORD),
    }
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    records = [
        (f"log record of {record.name}", formatter.format(record))
        for record in logs.records
        if not record.name.startswith(REMOTE_SIDE_LOGGERS)
    ]
    answers = [(label, text) for label, text in transcript.answers if label not in key_answers]
    # The haystack holds what it should: delivery logs, the AUTH refusals, the servers.
    assert any("event=delivery" in text for _, text in records)
    assert any("535" in text for _, text in records)
    assert any(f'"username":"{USER}"' in text for _, text in answers)
    assert len(answers) > 40
    for key in new_keys.values():
        assert any(key in text for label, text in transcript.answers if label in key_answers)

    leaks = [
        f"{what} in {where}"
        for where, text in [*records, *answers]
        for what, forms in secrets.items()
        if any(form in text for form in forms)
    ]
    assert leaks == []


def test_settings_and_endpoints_keep_their_secrets_out_of_their_repr() -> None:
    """What a traceback or a careless log line would print of them."""
    settings = Settings(
        secret_key="the-secret-key",
        secret_keys="the-new-key,the-old-key",
        default_smtp_url=f"smtp://{USER}:{RELAY_PASSWORD}@relay.example.com:587",
    )
    endpoint = default_relay(settings.default_smtp_url or "", 5.0)
    assert endpoint.password == RELAY_PASSWORD
    for shown in (repr(settings), repr(endpoint)):
        for secret in ("the-secret-key", "the-new-key", "the-old-key", RELAY_PASSWORD):
            assert secret not in shown
