"""Bad input on every endpoint: a 4xx with `{"error": {"code", "message"}}`, never a 500,
and nothing stored.

The cases share a workspace holding one SMTP server (the `{id}` in paths) and one
delivery; its stored servers (every column) and its delivery count are compared
before and after each request. The test client re-raises any exception the app
lets escape, so a case that would be a 500 fails loudly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery, SmtpServer
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

S = "/v1/smtp_servers"
P = "/v1/smtp_servers/{id}"
M = "/v1/test_messages"
D = "/v1/deliveries"

SERVER = {"name": "smtp-new", "host": "smtp.example.com"}
MESSAGE = {
    "campaign_type": "newsletter",
    "to": "bob@example.com",
    "from": "Acme <news@acme.example>",
    "subject": "Hello",
    "text": "Hi Bob",
}
CRLF_BCC = "\r\nBcc: eve@evil.example"
PEM = "<PEM>"  # replaced by a real CA certificate in PEM form


def server(**changes: Any) -> dict[str, Any]:
    return SERVER | changes


def msg(**changes: Any) -> dict[str, Any]:
    return MESSAGE | changes


@dataclass(frozen=True)
class Bad:
    label: str
    method: str
    path: str
    body: Any = None  # a JSON value; bytes go as they are; None: no body
    status: int = 422
    code: str = "invalid_request"
    mentions: str | None = None  # the message must name this (the field, mostly)
    content_type: str = "application/json"


def malformed(label: str, method: str, path: str, raw: bytes, **kw: Any) -> Bad:
    return Bad(label, method, path, raw, status=400, code="malformed_json", **kw)


CASES = [
    # malformed JSON
    malformed("create-truncated", "POST", S, b'{"name": "x", '),
    malformed("patch-missing-value", "PATCH", P, b'{"port": }'),
    malformed("message-not-json", "POST", M, b"not json"),
    malformed("create-single-quotes", "POST", S, b"{'name': 'x'}"),
    malformed("patch-trailing-comma", "PATCH", P, b'{"port": 25,}'),
    malformed("message-invalid-utf8", "POST", M, b'{"subject": "\xff\xfe"}'),
    malformed("create-nested-too-deep", "POST", S, b"[" * 100_000),
    malformed(
        "create-text-plain", "POST", S, json.dumps(SERVER).encode(), content_type="text/plain"
    ),
    # JSON, but not an object
    Bad("create-array", "POST", S, b"[]"),
    Bad("patch-number", "PATCH", P, b"123"),
    Bad("message-null", "POST", M, b"null"),
    Bad("create-empty-body", "POST", S, b""),
    # unknown fields
    Bad("create-unknown-field", "POST", S, server(nme="x"), mentions="unknown field 'nme'"),
    Bad("patch-unknown-field", "PATCH", P, {"colour": "red"}, mentions="unknown field 'colour'"),
    Bad(
        "patch-response-only-field",
        "PATCH",
        P,
        {"has_password": False},
        mentions="unknown field 'has_password'",
    ),
    Bad("patch-id", "PATCH", P, {"id": 7}, mentions="unknown field 'id'"),
    Bad("message-unknown-field", "POST", M, msg(cc="x@y.example"), mentions="unknown field 'cc'"),
    Bad(
        "message-python-name-of-from",
        "POST",
        M,
        {k: v for k, v in MESSAGE.items() if k != "from"} | {"from_": "news@acme.example"},
        mentions="unknown field 'from_'",
    ),
    # unknown enum values
    Bad("create-unknown-role", "POST", S, server(role="admin"), mentions="role"),
    Bad("patch-campaign-type-as-role", "PATCH", P, {"role": "newsletter"}, mentions="role"),
    Bad("create-unknown-security", "POST", S, server(security="ssl"), mentions="security"),
    Bad("patch-security-uppercase", "PATCH", P, {"security": "STARTTLS"}, mentions="security"),
    Bad(
        "message-unknown-campaign-type",
        "POST",
        M,
        msg(campaign_type="transactional"),
        mentions="campaign_type",
    ),
    Bad(
        "message-role-as-campaign-type",
        "POST",
        M,
        msg(campaign_type="newsletters"),
        mentions="campaign_type",
    ),
    # numbers out of range or of the wrong type
    Bad("create-port-0", "POST", S, server(port=0), mentions="port"),
    Bad("create-port-70000", "POST", S, server(port=70000), mentions="port"),
    Bad("patch-port-negative", "PATCH", P, {"port": -1}, mentions="port"),
    Bad("patch-port-text", "PATCH", P, {"port": "smtp"}, mentions="port"),
    Bad("create-port-fraction", "POST", S, server(port=25.5), mentions="port"),
    Bad("create-max-connections-0", "POST", S, server(max_connections=0), mentions="max_conn"),
    Bad("patch-max-connections-101", "PATCH", P, {"max_connections": 101}, mentions="max_conn"),
    Bad("patch-position-0", "PATCH", P, {"position": 0}, mentions="position"),
    Bad("create-name-number", "POST", S, server(name=123), mentions="name"),
    Bad("create-name-empty", "POST", S, server(name="   "), mentions="name"),
    Bad("create-name-too-long", "POST", S, server(name="x" * 201), mentions="name"),
    Bad("message-subject-too-long", "POST", M, msg(subject="x" * 999), mentions="subject"),
    # host names
    Bad("create-host-with-space", "POST", S, server(host="smtp example.com"), mentions="host"),
    Bad("patch-host-with-space", "PATCH", P, {"host": "smtp .example.com"}, mentions="host"),
    Bad("create-host-empty", "POST", S, server(host=""), mentions="host"),
    Bad("create-host-url", "POST", S, server(host="smtp://smtp.example.com"), mentions="host"),
    Bad("patch-host-double-dot", "PATCH", P, {"host": "smtp..example.com"}, mentions="host"),
    # CR or LF, which would start a header of their own
    Bad("create-name-crlf", "POST", S, server(name="a\r\nb"), mentions="name"),
    Bad("patch-name-lf", "PATCH", P, {"name": "a\nb"}, mentions="name"),
    Bad("patch-username-cr", "PATCH", P, {"username": "u\rX-Evil: 1"}, mentions="username"),
    Bad("message-subject-crlf", "POST", M, msg(subject="Hi" + CRLF_BCC), mentions="subject"),
    Bad("message-subject-lf", "POST", M, msg(subject="Hi\nBcc: e@x.example"), mentions="subject"),
    Bad(
        "message-from-crlf-in-name",
        "POST",
        M,
        msg(**{"from": f"Acme{CRLF_BCC} <news@acme.example>"}),
        mentions="from",
    ),
    Bad("message-to-crlf", "POST", M, msg(to="bob@example.com" + CRLF_BCC), mentions="to"),
    Bad(
        "message-reply-to-lf",
        "POST",
        M,
        msg(reply_to="help@acme.example\nBcc: eve@evil.example"),
        mentions="reply_to",
    ),
    # NUL, which PostgreSQL cannot store in text
    Bad("create-name-nul", "POST", S, server(name="a\x00b"), mentions="name"),
    Bad("patch-username-nul", "PATCH", P, {"username": "u\x00"}, mentions="username"),
    Bad("message-subject-nul", "POST", M, msg(subject="Hi\x00"), mentions="subject"),
    Bad("message-text-nul", "POST", M, msg(text="Hi\x00Bob"), mentions="text"),
    Bad("message-html-nul", "POST", M, msg(html="<p>\x00</p>"), mentions="html"),
    # addresses
    Bad("message-to-no-at", "POST", M, msg(to="not-an-address"), mentions="to"),
    Bad("message-to-no-domain", "POST", M, msg(to="bob@"), mentions="to"),
    Bad("message-to-with-name", "POST", M, msg(to="Bob <bob@example.com>"), mentions="to"),
    Bad("message-from-no-at", "POST", M, msg(**{"from": "acme.example"}), mentions="from"),
    Bad("message-from-empty", "POST", M, msg(**{"from": ""}), mentions="from"),
    Bad("message-reply-to-no-local", "POST", M, msg(reply_to="@acme.example"), mentions="reply_to"),
    Bad(
        "message-two-from-comma",
        "POST",
        M,
        msg(**{"from": "a@acme.example, b@acme.example"}),
        mentions="from",
    ),
    Bad(
        "message-two-from-brackets",
        "POST",
        M,
        msg(**{"from": "<a@acme.example> <b@acme.example>"}),
        mentions="from",
    ),
    Bad("message-two-to", "POST", M, msg(to="a@example.com, b@example.com"), mentions="to"),
    Bad(
        "message-two-reply-to",
        "POST",
        M,
        msg(reply_to="a@acme.example, b@acme.example"),
        mentions="reply_to",
    ),
    # required fields
    Bad("create-missing-host", "POST", S, {"name": "x"}, mentions="host"),
    Bad("create-null-name", "POST", S, server(name=None), mentions="name"),
    Bad("message-null-subject", "POST", M, msg(subject=None), mentions="subject"),
    Bad(
        "message-missing-subject",
        "POST",
        M,
        {k: v for k, v in MESSAGE.items() if k != "subject"},
        mentions="subject",
    ),
    *(
        Bad(f"patch-null-{name}", "PATCH", P, {name: None}, mentions=f"{name} cannot be null")
        for name in ("name", "host", "port", "security", "role", "position", "max_connections")
    ),
    # CA bundles
    *(
        Bad(f"{verb}-ca-bundle-{label}", method, path, body, code="invalid_ca_bundle")
        for verb, method, path, make in (
            ("create", "POST", S, lambda v: server(ca_bundle=v)),
            ("patch", "PATCH", P, lambda v: {"ca_bundle": v}),
        )
        for label, body in (
            ("text", make("not a certificate")),
            ("bad-base64", make("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")),
            ("non-ascii", make("-----BEGIN CERTIFICATE-----\né\n-----END CERTIFICATE-----")),
            ("pem-then-nul", make(PEM + "\x00")),
        )
    ),
    # path ids
    Bad("get-server-id-text", "GET", S + "/abc", mentions="server_id"),
    Bad("patch-server-id-fraction", "PATCH", S + "/1.5", {"port": 25}, mentions="server_id"),
    Bad("delete-server-id-zero", "DELETE", S + "/0", status=404, code="not_found"),
    Bad("get-server-id-negative", "GET", S + "/-1", status=404, code="not_found"),
    Bad("get-server-id-under-int32", "GET", S + "/-2147483649", mentions="server_id"),
    Bad("test-server-id-text", "POST", S + "/abc/test", mentions="server_id"),
    Bad("get-server-id-over-int32", "GET", S + "/2147483648", mentions="server_id"),
    Bad("get-server-id-huge", "GET", S + "/" + "9" * 30, mentions="server_id"),
    Bad("get-delivery-id-text", "GET", D + "/abc", mentions="delivery_id"),
    Bad("get-delivery-id-huge", "GET", D + "/99999999999", mentions="delivery_id"),
    # query parameters
    Bad("list-status-unknown", "GET", D + "?status=lost", mentions="status"),
    Bad("list-type-unknown", "GET", D + "?campaign_type=newsletters", mentions="campaign_type"),
    Bad("list-limit-0", "GET", D + "?limit=0", mentions="limit"),
    Bad("list-limit-501", "GET", D + "?limit=501", mentions="limit"),
    Bad("list-limit-text", "GET", D + "?limit=ten", mentions="limit"),
    Bad("list-before-text", "GET", D + "?before=abc", mentions="before"),
    Bad("list-before-huge", "GET", D + "?before=99999999999", mentions="before"),
    Bad("list-server-id-huge", "GET", D + "?smtp_server_id=" + "9" * 25, mentions="smtp_server"),
    Bad("list-campaign-id-huge", "GET", D + "?campaign_id=" + "9" * 25, mentions="campaign_id"),
    Bad("list-person-id-nul", "GET", D + "?person_id=%00", mentions="person_id"),
    # no such endpoint or method
    Bad("unknown-path", "GET", "/v1/smtp_server", status=404, code="not_found"),
    Bad("unknown-method", "PUT", P, SERVER, status=405, code="method_not_allowed"),
]


@dataclass(frozen=True)
class Target:
    """One workspace with one SMTP server, shared by every case of a backend."""

    client: TestClient
    database: Database
    settings: Settings
    workspace_id: int
    server_id: int

    def stored(self) -> tuple[list[tuple[Any, ...]], int]:
        """Every column of the workspace's servers, and its number of deliveries."""
        with self.database.session() as session:
            rows = session.execute(
                select(SmtpServer.__table__)
                .where(SmtpServer.workspace_id == self.workspace_id)
                .order_by(SmtpServer.id)
            ).all()
            deliveries = session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.workspace_id == self.workspace_id)
            )
        return [tuple(row) for row in rows], deliveries or 0


@pytest.fixture(scope="module")
def target(database_url: str) -> Iterator[Target]:
    """Nothing a case sends may be stored, so the cases can share one workspace: each
    compares what is stored before and after its own request."""
    settings = Settings(database_url=database_url, secret_key=Fernet.generate_key().decode())
    database = Database(database_url)
    with database.session() as session:
        created = create_workspace(session, "Bad input", Plan.PREMIUM)
    headers = {"Authorization": f"Bearer {created.api_key}"}
    with TestClient(create_app(settings, database), headers=headers) as client:
        response = client.post(
            "/v1/smtp_servers",
            json={"name": "smtp-main", "host": "smtp.example.com", "password": "pw"},
        )
        assert response.status_code == 201, response.text
        client.post("/v1/test_messages", json=MESSAGE).raise_for_status()
        yield Target(client, database, settings, created.workspace_id, response.json()["id"])
    database.dispose()


def send(client: TestClient, case: Bad, path: str, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return client.request(
            case.method, path, content=body, headers={"content-type": case.content_type}
        )
    if body is None:
        return client.request(case.method, path)
    return client.request(case.method, path, json=body)


def with_pem(body: Any, pem: str) -> Any:
    if isinstance(body, dict):
        return {k: with_pem(v, pem) for k, v in body.items()}
    if isinstance(body, str) and body.startswith(PEM):
        return pem + body.removeprefix(PEM)
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert 400 <= response.status_code < 500
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return body["error"]["message"]


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_bad_input_is_refused_with_an_error_and_stores_nothing(
    target: Target, ca_pem: str, case: Bad
) -> None:
    before = target.stored()
    path = case.path.format(id=target.server_id)
    response = send(target.client, case, path, with_pem(case.body, ca_pem))
    message = assert_error(response, case.status, case.code)
    if case.mentions is not None:
        assert case.mentions in message
    assert target.stored() == before


@pytest.mark.parametrize(
    ("method", "path"), [("POST", S), ("PATCH", P), ("POST", M)], ids=["create", "patch", "queue"]
)
@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "chunked"])
def test_a_body_over_the_limit_is_payload_too_large(
    target: Target, method: str, path: str, streamed: bool
) -> None:
    """Over `max_request_bytes`: 413, whether the length is declared or the body streamed."""
    limit = target.settings.max_request_bytes
    body = json.dumps({"name": "x" * limit}).encode()
    content: Any = iter([body[:1000], body[1000:]]) if streamed else body
    before = target.stored()
    response = target.client.request(
        method,
        path.format(id=target.server_id),
        content=content,
        headers={"content-type": "application/json"},
    )
    message = assert_error(response, 413, "payload_too_large")
    assert str(limit) in message
    assert target.stored() == before


def test_a_body_of_exactly_the_limit_is_accepted(target: Target) -> None:
    """The limit is inclusive: one byte more is refused, the limit itself is not."""
    limit = target.settings.max_request_bytes
    body = json.dumps(server(name="smtp-at-the-limit")).encode()
    at_limit = body + b" " * (limit - len(body))
    assert len(at_limit) == limit
    headers = {"content-type": "application/json"}
    response = target.client.post("/v1/smtp_servers", content=at_limit + b" ", headers=headers)
    assert_error(response, 413, "payload_too_large")
    response = target.client.post("/v1/smtp_servers", content=at_limit, headers=headers)
    assert response.status_code == 201, response.text
    target.client.delete(f"/v1/smtp_servers/{response.json()['id']}").raise_for_status()
