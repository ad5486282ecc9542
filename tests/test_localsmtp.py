"""Tests for the in-process SMTP server, driven by a real aiosmtplib client."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest
import trustme

from postyard.localsmtp import FaultScript, LocalSMTPServer, ReceivedMessage, free_port

SENDER = "sender@example.com"


def make_message(subject: str = "Hello", to: str = "rcpt@example.com") -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Body text\n")
    return message


def send(server: LocalSMTPServer, message: EmailMessage | None = None, **kwargs: Any) -> Any:
    kwargs.setdefault("timeout", 5)
    return asyncio.run(
        aiosmtplib.send(
            message or make_message(),
            hostname="127.0.0.1",
            port=server.port,
            **kwargs,
        )
    )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def plain_server() -> Iterator[LocalSMTPServer]:
    with LocalSMTPServer() as server:
        yield server


def test_plain_delivery_records_envelope_and_subject(plain_server: LocalSMTPServer) -> None:
    send(
        plain_server,
        make_message(subject="Welcome aboard"),
        recipients=["a@example.com", "b@example.com"],
    )

    [received] = plain_server.wait_for(1)
    assert isinstance(received, ReceivedMessage)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ("a@example.com", "b@example.com")
    assert received.subject == "Welcome aboard"
    assert received.header("from") == SENDER
    assert ("To", "rcpt@example.com") in received.headers
    assert received.text == "Body text\n"
    assert b"Subject: Welcome aboard" in received.data
    assert received.tls is False
    assert received.auth_user is None
    assert plain_server.url == f"smtp://127.0.0.1:{plain_server.port}"


def test_wait_for_times_out_with_clear_message(plain_server: LocalSMTPServer) -> None:
    with pytest.raises(TimeoutError, match="expected at least 1 message"):
        plain_server.wait_for(1, timeout=0.05)


def test_clear_and_restart_on_same_port() -> None:
    server = LocalSMTPServer(port=free_port())
    with server:
        port = server.port
        send(server)
        server.wait_for(1)
        server.clear()
        assert server.messages == []
    with server:
        assert server.port == port
        send(server)
        assert len(server.wait_for(1)) == 1


def test_starttls_is_offered_and_required(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    with LocalSMTPServer(tls=server_tls) as server:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            send(server, start_tls=False)
        assert refused.value.code == 530

        send(server, start_tls=True, tls_context=client_tls)
        [received] = server.wait_for(1)
        assert received.tls is True


def test_implicit_tls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with LocalSMTPServer(tls=server_tls, implicit_tls=True) as server:
        assert server.url.startswith("smtps://")
        send(server, use_tls=True, tls_context=client_tls)
        [received] = server.wait_for(1)
        assert received.tls is True


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_success_over_plain_tcp(mechanism: str) -> None:
    with LocalSMTPServer(auth=("user", "s3cret")) as server:

        async def deliver() -> None:
            async with aiosmtplib.SMTP(
                hostname="127.0.0.1", port=server.port, start_tls=False, timeout=5
            ) as client:
                await client.ehlo()
                assert mechanism.lower() in client.server_auth_methods
                login = client.auth_plain if mechanism == "PLAIN" else client.auth_login
                await login("user", "s3cret")
                await client.send_message(make_message())

        asyncio.run(deliver())
        [received] = server.wait_for(1)
        assert received.auth_user == "user"


def test_auth_is_required_and_wrong_password_gets_535() -> None:
    with LocalSMTPServer(auth=("user", "s3cret")) as server:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as unauthenticated:
            send(server)
        assert unauthenticated.value.code == 530

        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as wrong:
            send(server, username="user", password="nope")
        assert wrong.value.code == 535
        assert server.messages == []


def test_auth_with_implicit_tls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with LocalSMTPServer(tls=server_tls, implicit_tls=True, auth=("user", "pw")) as server:
        send(server, use_tls=True, tls_context=client_tls, username="user", password="pw")
        [received] = server.wait_for(1)
        assert (received.tls, received.auth_user) == (True, "user")


def test_auth_with_starttls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with LocalSMTPServer(tls=server_tls, auth=("user", "pw")) as server:
        send(server, start_tls=True, tls_context=client_tls, username="user", password="pw")
        [received] = server.wait_for(1)
        assert (received.tls, received.auth_user) == (True, "user")


def test_no_auth_advertised_without_credentials(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async def auth_methods(server: LocalSMTPServer) -> list[str]:
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=server.port, start_tls=True, tls_context=client_tls
        ) as client:
            await client.ehlo()
            return list(client.server_auth_methods)

    with LocalSMTPServer(tls=server_tls) as server:
        assert asyncio.run(auth_methods(server)) == []


def test_reply_then_accept_temporary_failure_once() -> None:
    faults = FaultScript.reply_then_accept("451 4.3.0 Try again later", times=1)
    with LocalSMTPServer(faults=faults) as server:
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            send(server)
        assert failed.value.code == 451
        assert server.messages == []
        assert server.rejected == 1

        send(server)
        assert len(server.wait_for(1)) == 1
        assert server.rejected == 1
        assert faults.remaining == 0


def test_reply_then_accept_at_rcpt_refuses_whole_transaction() -> None:
    faults = FaultScript.reply_then_accept("450 4.2.0 Mailbox busy", times=1, at="RCPT")
    with LocalSMTPServer(faults=faults) as server:
        recipients = ["a@example.com", "b@example.com"]
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            send(server, recipients=recipients)
        assert server.rejected == 2

        send(server, recipients=recipients)
        [received] = server.wait_for(1)
        assert received.rcpt_tos == tuple(recipients)


def test_always_refuses_everything() -> None:
    with LocalSMTPServer(faults=FaultScript.always("554 5.7.1 Rejected")) as server:
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPDataError):
                send(server)
        assert server.rejected == 2
        assert server.messages == []


def test_reject_recipients_with_550() -> None:
    faults = FaultScript.reject_recipients({"Bad@Example.com": "550 5.1.1 No such user"})
    with LocalSMTPServer(faults=faults) as server:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            send(server, recipients=["bad@example.com"])
        assert [error.code for error in refused.value.recipients] == [550]

        errors, _ = send(server, recipients=["good@example.com", "bad@example.com"])
        assert errors["bad@example.com"].code == 550
        [received] = server.wait_for(1)
        assert received.rcpt_tos == ("good@example.com",)
        assert server.rejected == 2


def test_invalid_fault_reply_is_rejected_early() -> None:
    with pytest.raises(ValueError, match="4xx/5xx"):
        FaultScript.always("250 OK")


def test_port_unknown_before_start() -> None:
    with pytest.raises(RuntimeError, match="start"):
        _ = LocalSMTPServer().port


def test_busy_port_fails_fast(plain_server: LocalSMTPServer) -> None:
    clash = LocalSMTPServer(port=plain_server.port)
    with pytest.raises(OSError):
        clash.start()
    assert not clash.running
