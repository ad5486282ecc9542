"""A real SMTP server that runs inside the current process and records what it receives.

``postyard demo``, the test suite and the benchmarks all need somewhere to send mail that
behaves like a real relay (TLS, AUTH, temporary and permanent failures) without leaving the
machine. Talking to an actual socket, rather than mocking the SMTP client, is what lets those
callers trust that the delivery code works against a real server.

Typical use::

    with LocalSMTPServer(auth=("user", "secret")) as server:
        deliver_something(host="127.0.0.1", port=server.port)
        [message] = server.wait_for(1)
        assert message.subject == "Welcome"
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import socket
import ssl
import subprocess
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from functools import cached_property
from types import MappingProxyType, TracebackType
from typing import Any, Literal, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = [
    "FaultScript",
    "LocalSMTPServer",
    "ReceivedMessage",
    "free_port",
]

FaultStage = Literal["RCPT", "DATA"]

DATA_SIZE_LIMIT = 50 * 1024 * 1024
"""Generous so benchmarks with large attachments measure delivery, not the 32 MiB default."""

_REPLY_RE = re.compile(r"^[45]\d\d(?: .*)?$")
_AUTH_REQUIRED = "530 5.7.0 Authentication required"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago.

    Racy by nature (someone may grab the port before the caller binds it), so prefer
    ``LocalSMTPServer(port=0)``; this exists for configs that must name a port up front.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until_listening(
    process: subprocess.Popen[bytes], port: int, host: str = "127.0.0.1", timeout: float = 5.0
) -> bool:
    """Whether a server in another process (smtp-sink, for the tests and benchmarks) accepts
    connections on `port` within `timeout`; False at once when the process has ended, as it
    does when another process took the port first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


@dataclass(frozen=True)
class ReceivedMessage:
    """One accepted SMTP transaction, kept byte for byte so tests can assert on the wire data."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool = False
    """Whether the transaction ran over TLS (STARTTLS or implicit), to catch silent downgrades."""
    auth_user: str | None = None
    """The login the client authenticated as, or None if it did not authenticate."""

    @cached_property
    def message(self) -> EmailMessage:
        """Parsed lazily: benchmarks that only count messages should not pay for parsing."""
        parsed = BytesParser(policy=default_policy).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def subject(self) -> str | None:
        value = self.message["Subject"]
        return None if value is None else str(value)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header in arrival order; a list because Received/To/etc. may repeat."""
        return [(name, str(value)) for name, value in self.message.items()]

    def header(self, name: str) -> str | None:
        """Case-insensitive lookup of the first header called ``name``."""
        value = self.message[name]
        return None if value is None else str(value)

    @property
    def text(self) -> str | None:
        """The text/plain body, if any, so tests need not walk the MIME tree.

        Line endings are turned from the wire's CRLF into LF so it compares equal to
        what the product rendered; ``data`` keeps the exact bytes.
        """
        return self._body("plain")

    @property
    def html(self) -> str | None:
        """The text/html body, if any, with LF line endings like ``text``."""
        return self._body("html")

    def _body(self, subtype: str) -> str | None:
        part = self.message.get_body(preferencelist=(subtype,))
        if part is None:
            return None
        content = part.get_content()
        return content.replace("\r\n", "\n") if isinstance(content, str) else None


@dataclass
class FaultScript:
    """Makes the server refuse mail on purpose so retry and bounce handling can be exercised.

    ``reply`` is sent instead of accepting a transaction, for the first ``times`` transactions
    (``None`` means forever), at the ``at`` stage. With ``at="RCPT"`` the whole transaction is
    refused: every RCPT of a faulted transaction gets ``reply``. ``recipients`` refuses single
    addresses (case-insensitively) at RCPT time, independently of ``reply``; the rest of the
    transaction still goes through, as a real relay would do.

    The counter is shared by all connections of one server, so create one script per server.
    """

    reply: str | None = None
    times: int | None = None
    at: FaultStage = "DATA"
    recipients: Mapping[str, str] = field(default_factory=dict)
    _faulted: int = field(default=0, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.at not in ("RCPT", "DATA"):
            raise ValueError(f"at must be 'RCPT' or 'DATA', not {self.at!r}")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or None")
        if self.reply is not None:
            _check_reply(self.reply)
        for reply in self.recipients.values():
            _check_reply(reply)
        self.recipients = MappingProxyType(
            {address.lower(): reply for address, reply in self.recipients.items()}
        )

    @classmethod
    def reply_then_accept(cls, reply: str, times: int, *, at: FaultStage = "DATA") -> FaultScript:
        """Refuse the first ``times`` transactions with ``reply``, then behave normally."""
        return cls(reply=reply, times=times, at=at)

    @classmethod
    def always(cls, reply: str, *, at: FaultStage = "DATA") -> FaultScript:
        """Refuse every transaction with ``reply``."""
        return cls(reply=reply, times=None, at=at)

    @classmethod
    def reject_recipients(cls, recipients: Mapping[str, str]) -> FaultScript:
        """Refuse the given addresses at RCPT time with their mapped reply."""
        return cls(recipients=recipients)

    @property
    def faulted(self) -> int:
        """How many transactions ``reply`` has been used for so far."""
        with self._lock:
            return self._faulted

    @property
    def remaining(self) -> int | None:
        """Transactions still to be refused with ``reply``; None when unlimited."""
        if self.reply is None:
            return 0
        if self.times is None:
            return None
        with self._lock:
            return max(self.times - self._faulted, 0)

    def reset(self) -> None:
        """Re-arm the script so a fixture can reuse it across test phases."""
        with self._lock:
            self._faulted = 0

    def take(self, stage: FaultStage) -> str | None:
        """Consume one fault for a transaction reaching ``stage``; None means accept it."""
        if self.reply is None or stage != self.at:
            return None
        with self._lock:
            if self.times is not None and self._faulted >= self.times:
                return None
            self._faulted += 1
            return self.reply

    def recipient_reply(self, address: str) -> str | None:
        """The refusal configured for ``address``, if any."""
        return self.recipients.get(address.lower())


def _check_reply(reply: str) -> None:
    # A 2xx/3xx here would make aiosmtpd claim success without recording anything.
    if not _REPLY_RE.match(reply):
        raise ValueError(
            f"fault reply must be a 4xx/5xx SMTP reply like '451 Try later': {reply!r}"
        )


class _QuietLoginDataWarning(logging.Filter):
    """Drops the warning aiosmtpd 1.4 logs on *every* successful AUTH.

    Its own smtp_AUTH assigns the deprecated ``Session.login_data``, so the warning is not
    actionable and would clutter ``postyard demo`` output and test logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


def _quiet_aiosmtpd_auth_warning() -> None:
    logger = logging.getLogger("mail.log")
    if not any(isinstance(f, _QuietLoginDataWarning) for f in logger.filters):
        logger.addFilter(_QuietLoginDataWarning())


class _Mailbox:
    """State shared between the server's event-loop thread and the caller's threads."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.messages: list[ReceivedMessage] = []
        self.rejected = 0

    def add(self, message: ReceivedMessage) -> None:
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()

    def reject(self) -> None:
        with self.changed:
            self.rejected += 1
            self.changed.notify_all()


class _Handler:
    """aiosmtpd hooks; run on the Controller's event-loop thread."""

    def __init__(
        self,
        mailbox: _Mailbox,
        *,
        auth: tuple[str, str] | None,
        faults: FaultScript | None,
    ) -> None:
        self._mailbox = mailbox
        self._auth = auth
        self._faults = faults
        # Per-transaction RCPT decision. Keyed by the Envelope, which aiosmtpd replaces on
        # every RSET/EHLO/completed DATA, so a new transaction gets a fresh decision.
        self._rcpt_decisions: weakref.WeakKeyDictionary[Envelope, str | None] = (
            weakref.WeakKeyDictionary()
        )

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # The 5-argument hook replaces aiosmtpd's own bookkeeping, so do it here.
        session.host_name = hostname
        if self._auth is None:
            # aiosmtpd advertises AUTH even with no mechanisms left; a server without
            # credentials should look like one, so clients don't attempt to log in.
            responses = [line for line in responses if not line[4:].upper().startswith("AUTH")]
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Enforced here instead of via auth_required=True, which warns whenever AUTH is
        # allowed without TLS (the plain-AUTH case we deliberately support).
        if self._auth is not None and not session.authenticated:
            return _AUTH_REQUIRED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self._faults is not None:
            if envelope not in self._rcpt_decisions:
                self._rcpt_decisions[envelope] = self._faults.take("RCPT")
            reply = self._rcpt_decisions[envelope] or self._faults.recipient_reply(address)
            if reply is not None:
                self._mailbox.reject()
                return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._faults is not None:
            reply = self._faults.take("DATA")
            if reply is not None:
                self._mailbox.reject()
                return reply
        transport = server.transport
        auth_data = session.auth_data
        self._mailbox.add(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                # session.ssl is only set after STARTTLS; implicit TLS shows up on the transport.
                tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
                auth_user=(
                    auth_data.login.decode("utf-8", "replace")
                    if isinstance(auth_data, LoginPassword)
                    else None
                ),
            )
        )
        return "250 OK"


class _Controller(Controller):
    """Controller that supports port 0 and reports bind errors immediately.

    Stock Controller connects to ``self.port`` to check readiness, which fails for port 0,
    so the port is read back from the listening socket before that check runs. It also only
    notices a failed bind after ``ready_timeout`` (5 s), which would make an "address in use"
    cost every test that hits it five seconds.
    """

    def _run(self, ready_event: threading.Event) -> None:
        try:
            super()._run(ready_event)
        finally:
            # On a bind failure the stock _run returns without signalling readiness;
            # _trigger_server below then re-raises the stored bind error.
            ready_event.set()

    def _trigger_server(self) -> None:
        if self._thread_exception is not None:
            raise self._thread_exception
        super()._trigger_server()

    def _create_server(self) -> Any:
        return self._bind()

    async def _bind(self) -> asyncio.AbstractServer:
        server = await self.loop.create_server(
            self._factory_invoker,
            host=self.hostname,
            port=self.port,
            ssl=self.ssl_context,
        )
        if self.port == 0:
            self.port = int(server.sockets[0].getsockname()[1])
        return server


class LocalSMTPServer:
    """An in-process SMTP server with optional STARTTLS/implicit TLS, AUTH and scripted faults.

    ``tls`` without ``implicit_tls`` behaves like a submission port that insists on STARTTLS;
    with ``implicit_tls`` it behaves like port 465. ``auth`` makes authentication mandatory
    before MAIL; over plain TCP it is still accepted so credential handling can be tested
    without certificates.

    After ``stop()``, ``start()`` binds the same port again so a client configured with the
    old address can be shown to recover from an outage.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "smtp",
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        auth: tuple[str, str] | None = None,
        faults: FaultScript | None = None,
    ) -> None:
        if implicit_tls and tls is None:
            raise ValueError("implicit_tls=True needs a server-side ssl.SSLContext in tls=")
        self.host = host
        self.name = name
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.faults = faults
        self._port = port
        self._mailbox = _Mailbox()
        self._controller: _Controller | None = None
        self._lifecycle = threading.Lock()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalSMTPServer {self.name!r} {self._describe_address()} {state}>"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._controller is not None

    @property
    def port(self) -> int:
        """The bound port; with ``port=0`` it is only known once the server has started."""
        if self._port == 0:
            raise RuntimeError(f"{self.name}: port is chosen on start(); start the server first")
        return self._port

    @property
    def url(self) -> str:
        """``smtp://host:port``, or ``smtps://`` for implicit TLS, for URL-style configs."""
        scheme = "smtps" if self.implicit_tls else "smtp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot copy, so callers can iterate while mail keeps arriving."""
        with self._mailbox.changed:
            return list(self._mailbox.messages)

    @property
    def rejected(self) -> int:
        """How many refusals the FaultScript caused (each refused RCPT or DATA counts once)."""
        with self._mailbox.changed:
            return self._mailbox.rejected

    def start(self) -> None:
        with self._lifecycle:
            if self._controller is not None:
                raise RuntimeError(f"{self.name}: already running on {self._describe_address()}")
            if self.auth is not None:
                _quiet_aiosmtpd_auth_warning()
            controller = _Controller(
                _Handler(self._mailbox, auth=self.auth, faults=self.faults),
                hostname=self.host,
                port=self._port,
                ssl_context=self.tls if self.implicit_tls else None,
                # Without an explicit name aiosmtpd calls socket.getfqdn() on every
                # connection, which can stall for seconds on hosts with slow DNS.
                server_hostname=f"{self.name}.localsmtp.invalid",
                ident=f"postyard localsmtp ({self.name})",
                tls_context=None if self.implicit_tls else self.tls,
                require_starttls=self.tls is not None and not self.implicit_tls,
                # aiosmtpd only counts STARTTLS as "TLS", so an implicit-TLS connection would
                # be refused AUTH with 538; STARTTLS servers still hide AUTH until upgraded.
                auth_require_tls=self.tls is not None and not self.implicit_tls,
                authenticator=self._authenticate if self.auth is not None else None,
                auth_exclude_mechanism=self._excluded_mechanisms(),
                data_size_limit=DATA_SIZE_LIMIT,
                decode_data=False,
            )
            try:
                controller.start()
            except BaseException:
                controller.stop(no_assert=True)
                if not controller.loop.is_closed():
                    controller.loop.close()
                raise
            self._port = controller.port
            self._controller = controller

    def stop(self) -> None:
        """Stop listening and drop open connections; safe to call when already stopped."""
        with self._lifecycle:
            controller, self._controller = self._controller, None
            if controller is not None:
                controller.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages have been accepted; return all of them.

        Delivery in the product is asynchronous, so tests need to wait rather than poll.
        """
        mailbox = self._mailbox
        with mailbox.changed:
            if not mailbox.changed.wait_for(lambda: len(mailbox.messages) >= count, timeout):
                raise TimeoutError(
                    f"{self.name} ({self._describe_address()}): expected at least {count} "
                    f"message(s) within {timeout:g}s, got {len(mailbox.messages)} "
                    f"(and {mailbox.rejected} refused by the fault script)"
                )
            return list(mailbox.messages)

    def clear(self) -> None:
        """Forget received messages and the rejection count, e.g. between test phases."""
        with self._mailbox.changed:
            self._mailbox.messages.clear()
            self._mailbox.rejected = 0

    def _describe_address(self) -> str:
        return self.url if self._port else f"{self.host}:<unbound>"

    def _excluded_mechanisms(self) -> Iterable[str]:
        # Only the builtins exist; without credentials none of them can ever succeed.
        return () if self.auth is not None else ("PLAIN", "LOGIN")

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        # handled=False lets aiosmtpd send its standard "535 5.7.8" on failure.
        assert self.auth is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username, password = self.auth
        # Compare both parts regardless, so timing does not reveal which one was wrong.
        user_ok = hmac.compare_digest(auth_data.login, username.encode())
        password_ok = hmac.compare_digest(auth_data.password, password.encode())
        return AuthResult(success=user_ok and password_ok, handled=False, auth_data=auth_data)
