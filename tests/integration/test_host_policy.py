"""Multi-tenant mode: SMTP servers cannot point Postyard at the network it runs in.

Refused hosts and ports are refused when configured (422 `host_not_allowed`, nothing
stored); a name that resolves somewhere refused by the time mail is sent fails that mail
(not deferred); the connection goes to the very address that was checked; TLS still verifies
the configured name. Real SMTP servers throughout; only name resolution is replaced, through
the worker's `guard`, to give names to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import ssl
from collections.abc import Callable, Iterator
from ipaddress import ip_address, ip_network
from typing import Any

import pytest
import trustme
from fastapi.testclient import TestClient
from integration_helpers import add_local, delivery, queue

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.delivery.endpoints import host_guard
from postyard.delivery.worker import Worker
from postyard.hostpolicy import IPAddress
from postyard.localsmtp import LocalSMTPServer
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

StartSmtp = Callable[..., LocalSMTPServer]
ClientFor = Callable[[Settings], TestClient]

LOOPBACK = (ip_network("127.0.0.0/8"), ip_network("::1/128"))
MAIL_NAME = "mail.postyard.test"
"""A name no real resolver knows (.test is reserved): only the checked address can reach it."""


@pytest.fixture
def multi_tenant(settings: Settings) -> Settings:
    return dataclasses.replace(settings, multi_tenant=True)


@pytest.fixture
def client_for(database: Database) -> Iterator[ClientFor]:
    """`client_for(settings)`: one workspace's API, served under the settings given; the
    same workspace each call, so a test can change the instance's settings under it."""
    with database.session() as session:
        api_key = create_workspace(session, "Acme", Plan.PREMIUM).api_key
    clients: list[TestClient] = []

    def make(settings: Settings) -> TestClient:
        client = TestClient(
            create_app(settings, database), headers={"Authorization": f"Bearer {api_key}"}
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def resolving(names: dict[str, str], calls: list[str]) -> Callable[[str, int], Any]:
    def resolve(host: str, port: int) -> tuple[IPAddress, ...]:
        calls.append(host)
        return (ip_address(names[host]),)

    return resolve


def send_once(database: Database, settings: Settings, **worker_options: Any) -> None:
    worker = Worker(database, settings, **worker_options)

    async def once() -> None:
        try:
            assert await worker.run_once() == 1
        finally:
            await worker.pools.close()

    asyncio.run(once())


@pytest.mark.parametrize(
    ("host", "port", "reason"),
    [
        ("127.0.0.1", 587, re.escape("127.0.0.1 is a loopback address")),
        ("169.254.169.254", 587, re.escape("169.254.169.254 is a cloud metadata address")),
        ("10.9.8.7", 25, re.escape("10.9.8.7 is a private address")),
        (
            "::ffff:192.168.0.1",
            587,
            re.escape("is a private address (192.168.0.1, embedded in IPv6)"),
        ),
        ("localhost", 587, r"localhost: (127\.0\.0\.1|::1) is a loopback address"),
        ("8.8.8.8", 2526, re.escape("port 2526 is not an allowed SMTP port (25, 465, 587, 2525)")),
    ],
)
def test_configuring_a_refused_host_or_port_is_a_422_naming_the_reason_and_stores_nothing(
    client_for: ClientFor, multi_tenant: Settings, host: str, port: int, reason: str
) -> None:
    api = client_for(multi_tenant)

    response = api.post("/v1/smtp_servers", json={"name": "inward", "host": host, "port": port})

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "host_not_allowed"
    assert re.search(reason, error["message"]), error["message"]
    assert api.get("/v1/smtp_servers").json()["data"] == []


def test_the_web_form_refuses_a_refused_host_too(
    client_for: ClientFor, multi_tenant: Settings
) -> None:
    api = client_for(multi_tenant)
    web = client_for(multi_tenant)
    api_key = web.headers.pop("Authorization").removeprefix("Bearer ")
    csrf = re.compile(r'name="csrf_token" value="([^"]+)"')
    signed_in = web.post(
        "/login",
        data={"csrf_token": csrf.search(web.get("/login").text)[1], "api_key": api_key},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303, signed_in.text

    page = web.post(
        "/smtp/new",
        data={
            "csrf_token": csrf.search(web.get("/smtp/new").text)[1],
            "name": "inward",
            "host": "169.254.169.254",
            "port": "587",
            "security": "starttls",
            "max_connections": "4",
        },
        follow_redirects=False,
    )

    assert page.status_code == 422, page.text
    assert "169.254.169.254 is a cloud metadata address" in page.text
    assert api.get("/v1/smtp_servers").json()["data"] == []


def test_editing_a_server_to_a_refused_host_is_refused_and_changes_nothing(
    client_for: ClientFor, multi_tenant: Settings
) -> None:
    api = client_for(multi_tenant)
    created = api.post("/v1/smtp_servers", json={"name": "main", "host": "8.8.8.8", "port": 587})
    assert created.status_code == 201, created.text
    server_id = created.json()["id"]

    to_loopback = api.patch(f"/v1/smtp_servers/{server_id}", json={"host": "127.0.0.1"})
    to_http_port = api.patch(f"/v1/smtp_servers/{server_id}", json={"port": 80})

    assert to_loopback.status_code == 422, to_loopback.text
    assert to_loopback.json()["error"]["code"] == "host_not_allowed"
    assert to_http_port.status_code == 422, to_http_port.text
    assert "port 80" in to_http_port.json()["error"]["message"]
    stored = api.get(f"/v1/smtp_servers/{server_id}").json()
    assert (stored["host"], stored["port"]) == ("8.8.8.8", 587)


def test_a_name_that_resolves_to_a_refused_address_at_send_time_fails_the_delivery(
    client_for: ClientFor,
    multi_tenant: Settings,
    database: Database,
    start_smtp: StartSmtp,
) -> None:
    """Allowed when configured (the operator's allow-list then covered it); by send time the
    allow-list is gone and `localhost` is refused: failed at once, never retried."""
    smtp = start_smtp("smtp-inside")
    strict = dataclasses.replace(multi_tenant, smtp_allowed_ports=(smtp.port,))
    lenient = dataclasses.replace(strict, smtp_allowed_networks=LOOPBACK)
    api = client_for(lenient)
    add_local(api, smtp, host="localhost")
    delivery_id = queue(api, "newsletter")["id"]

    send_once(database, strict)

    record = delivery(api, delivery_id)
    assert record["status"] == "failed", record
    assert record["attempts"] == 1
    assert record["last_error"].startswith("host_not_allowed: localhost: ")
    assert "is a loopback address" in record["last_error"]
    assert smtp.messages == []


def test_connection_test_reports_a_refused_host_as_a_failed_connect_step(
    client_for: ClientFor, multi_tenant: Settings, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp("smtp-inside")
    strict = dataclasses.replace(multi_tenant, smtp_allowed_ports=(smtp.port,))
    server = add_local(
        client_for(dataclasses.replace(strict, smtp_allowed_networks=LOOPBACK)), smtp
    )

    response = client_for(strict).post(f"/v1/smtp_servers/{server['id']}/test")

    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is False
    assert report["steps"] == [
        {
            "step": "connect",
            "ok": False,
            "reply": "host_not_allowed: 127.0.0.1 is a loopback address",
        }
    ]


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["starttls", "tls"])
def test_an_allowed_name_is_sent_to_the_address_it_was_checked_at_with_tls_for_the_name(
    client_for: ClientFor,
    multi_tenant: Settings,
    database: Database,
    start_smtp: StartSmtp,
    tls_ca: trustme.CA,
    ca_pem: str,
    implicit_tls: bool,
) -> None:
    """The certificate names only MAIL_NAME, so verification passes only if it is checked
    against the configured name although the connection is made to an IP address."""
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert(MAIL_NAME).configure_cert(server_tls)
    smtp = start_smtp("smtp-named", tls=server_tls, implicit_tls=implicit_tls)
    allowed = dataclasses.replace(
        multi_tenant, smtp_allowed_networks=LOOPBACK, smtp_allowed_ports=(smtp.port,)
    )
    api = client_for(allowed)
    security = "tls" if implicit_tls else "starttls"
    add_local(api, smtp, host=MAIL_NAME, security=security, ca_bundle=ca_pem)
    delivery_id = queue(api, "newsletter")["id"]
    calls: list[str] = []

    send_once(
        database, allowed, guard=host_guard(allowed, resolving({MAIL_NAME: "127.0.0.1"}, calls))
    )

    record = delivery(api, delivery_id)
    assert record["status"] == "sent", record
    assert calls == [MAIL_NAME]
    [message] = smtp.messages
    assert message.tls is True


def test_a_certificate_for_another_name_is_still_refused_when_connecting_by_address(
    client_for: ClientFor,
    multi_tenant: Settings,
    database: Database,
    start_smtp: StartSmtp,
    tls_ca: trustme.CA,
    ca_pem: str,
) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("other.postyard.test").configure_cert(server_tls)
    smtp = start_smtp("smtp-named", tls=server_tls)
    allowed = dataclasses.replace(
        multi_tenant, smtp_allowed_networks=LOOPBACK, smtp_allowed_ports=(smtp.port,)
    )
    api = client_for(allowed)
    add_local(api, smtp, host=MAIL_NAME, security="starttls", ca_bundle=ca_pem)
    delivery_id = queue(api, "newsletter")["id"]

    send_once(database, allowed, guard=host_guard(allowed, resolving({MAIL_NAME: "127.0.0.1"}, [])))

    record = delivery(api, delivery_id)
    assert record["status"] == "deferred", record
    assert "certificate verify failed" in record["last_error"].lower()
    assert smtp.messages == []


def test_a_name_resolving_to_a_refused_address_among_allowed_ones_is_refused_whole(
    client_for: ClientFor,
    multi_tenant: Settings,
    database: Database,
    start_smtp: StartSmtp,
) -> None:
    smtp = start_smtp("smtp-named")
    allowed = dataclasses.replace(
        multi_tenant,
        smtp_allowed_networks=(ip_network("127.0.0.1/32"),),
        smtp_allowed_ports=(smtp.port,),
    )
    api = client_for(allowed)
    add_local(api, smtp, host=MAIL_NAME)
    delivery_id = queue(api, "newsletter")["id"]

    def two_faced(host: str, port: int) -> tuple[IPAddress, ...]:
        return (ip_address("127.0.0.1"), ip_address("169.254.169.254"))

    send_once(database, allowed, guard=host_guard(allowed, two_faced))

    record = delivery(api, delivery_id)
    assert record["status"] == "failed", record
    assert record["last_error"] == (
        f"host_not_allowed: {MAIL_NAME}: 169.254.169.254 is a cloud metadata address"
    )
    assert smtp.messages == []


def test_single_team_default_still_delivers_to_loopback(
    client_for: ClientFor, settings: Settings, database: Database, start_smtp: StartSmtp
) -> None:
    assert settings.multi_tenant is False
    smtp = start_smtp("smtp-local")
    api = client_for(settings)
    add_local(api, smtp)
    delivery_id = queue(api, "newsletter")["id"]

    send_once(database, settings)

    assert delivery(api, delivery_id)["status"] == "sent"
    assert len(smtp.messages) == 1
