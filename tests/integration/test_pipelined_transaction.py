"""The pipelined SMTP transaction (RFC 2920) against real servers: what arrives, what is
refused and how, and what becomes of the connection afterwards.

Three kinds of peer: Postfix's smtp-sink (a real pipelining server, whose dumps show what
it took), aiosmtpd told to announce PIPELINING (it reads commands one after the other from
its buffer, so it pipelines well; scripted refusals, TLS), and a raw scripted peer for what
real servers do only now and then (multi-line replies in pieces, a hang-up mid-group, a
354 after a refused recipient, silence).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib
import pytest
import uvloop
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as ServerSession
from smtp_sink import SmtpSink

from postyard.delivery import transaction
from postyard.delivery.endpoints import Endpoint
from postyard.delivery.pool import ConnectionPool, Session, close_session
from postyard.delivery.smtp_pipeline import Pipeline
from postyard.localsmtp import free_port

LOCALHOST = "127.0.0.1"
SENDER = "news@example.com"
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}

StartSink = Callable[..., SmtpSink]
Outcome = tuple[str, int | None, str]


def run(main: Callable[[], Awaitable[Any]], loop: str = "asyncio") -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(main())


def message(tag: str, body: bytes = b"Hello.\r\n") -> bytes:
    return b"Subject: %s\r\nMessage-ID: <%s@test.invalid>\r\n\r\n%s" % (
        tag.encode(),
        tag.encode(),
        body,
    )


async def open_session(port: int, timeout: float = 5.0) -> Session:
    client = aiosmtplib.SMTP(
        hostname=LOCALHOST, port=port, timeout=timeout, local_hostname="client.test.invalid"
    )
    await client.connect()
    return Session(client)


async def outcome(session: Session, recipient: str, data: bytes) -> Outcome:
    """What the worker reads from a send: the exception type and its code and text."""
    try:
        reply = await transaction.send(session, SENDER, recipient, data)
    except aiosmtplib.SMTPRecipientsRefused as refused:
        first = refused.recipients[0]
        return ("SMTPRecipientsRefused", first.code, first.message)
    except aiosmtplib.SMTPResponseException as error:
        return (type(error).__name__, error.code, error.message)
    except aiosmtplib.SMTPException as error:
        return (type(error).__name__, None, str(error))
    return ("sent", reply.code, reply.message)


# --- smtp-sink: a real pipelining server -------------------------------------------------

TRICKY_MESSAGES = {
    "dots": b".hidden\r\n..two\r\n.\r\nafter the lone dot\r\n",
    "unterminated": b"the last line has no line end",
    "dot-unterminated": b"the last line is a lone dot\r\n.",
    "bare-lf": b".dot after a bare LF\nand a bare CR\rend\n",
}


def as_dumped(data: bytes) -> bytes:
    """`data` as smtp-sink dumps it: LF line ends, ended by a line end."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return lines if lines.endswith(b"\n") else lines + b"\n"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_pipelining_server_receives_every_message_intact(
    start_sink: StartSink, loop: str
) -> None:
    sink = start_sink()
    sent = {tag: message(tag, body) for tag, body in TRICKY_MESSAGES.items()}

    async def main() -> Session:
        session = await open_session(sink.port)
        try:
            for data in sent.values():
                reply = await transaction.send(session, SENDER, "ada@example.com", data)
                assert reply.code == 250
            return session
        finally:
            await close_session(session)

    session = run(main, loop)

    assert session.pipeline is not None, "smtp-sink announces PIPELINING"
    dumps = [path.read_bytes() for path in sink.dumps.rglob("*") if path.is_file()]
    assert len(dumps) == len(sent)
    for tag, data in sent.items():
        [dump] = [d for d in dumps if b"<%s@test.invalid>" % tag.encode() in d]
        # smtp-sink ends each dump with an empty line of its own.
        assert dump.endswith(as_dumped(data) + b"\n"), tag


def test_a_hang_up_after_the_final_dot_reads_as_a_lost_connection(
    start_sink: StartSink,
) -> None:
    sink = start_sink("-q", ".")

    async def main() -> tuple[Outcome, bool]:
        session = await open_session(sink.port)
        try:
            return await outcome(session, "ada@example.com", message("taken")), (
                session.is_connected
            )
        finally:
            await close_session(session)

    result, connected = run(main)

    assert result[0] == "SMTPServerDisconnected"
    assert connected is False
    assert sink.message_ids() == {"<taken@test.invalid>": 1}


# --- aiosmtpd announcing PIPELINING: refusals, and the connection after them -------------


@dataclass
class Handler:
    """Accepts mail, refusing the sender, recipients or messages it is told to."""

    pipelining: bool = True
    refuse_sender: dict[str, str] = field(default_factory=dict)
    refuse_recipient: dict[str, str] = field(default_factory=dict)
    refuse_message: dict[bytes, str] = field(default_factory=dict)
    slow_message: dict[bytes, float] = field(default_factory=dict)
    """Seconds to wait before answering the final dot of a message with the marker."""
    taken: list[tuple[object, bytes, bool]] = field(default_factory=list)
    """(connection's client address, content, over TLS) of each message taken."""
    quits: int = 0
    greetings: int = 0
    """EHLOs: one per connection."""

    async def handle_EHLO(
        self,
        server: SMTP,
        session: ServerSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.greetings += 1
        if not self.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: ServerSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address in self.refuse_sender:
            return self.refuse_sender[address]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: ServerSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address in self.refuse_recipient:
            return self.refuse_recipient[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: ServerSession, envelope: Envelope) -> str:
        content = bytes(envelope.original_content or b"")
        for marker, delay in self.slow_message.items():
            if marker in content:
                await asyncio.sleep(delay)
        for marker, reply in self.refuse_message.items():
            if marker in content:
                return reply
        # session.ssl is only set after STARTTLS; implicit TLS shows up on the transport.
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        # The client's address tells connections apart; an object's id can be reused once
        # the connection's session is gone.
        self.taken.append((session.peer, content, tls))
        return "250 2.0.0 Queued as 42"

    async def handle_QUIT(self, server: SMTP, session: ServerSession, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"


def pooled_endpoint(port: int, **fields: Any) -> Endpoint:
    """A server on localhost with one connection, plain unless `fields` say otherwise."""
    defaults: dict[str, Any] = {
        "key": f"server-{port}",
        "server_id": None,
        "name": f"server-{port}",
        "host": LOCALHOST,
        "port": port,
        "security": "none",
        "username": None,
        "password": None,
        "ca_bundle": None,
        "max_connections": 1,
        "timeout": 5.0,
    }
    return Endpoint(**{**defaults, **fields})


@contextmanager
def aiosmtpd_server(handler: Handler, **options: Any) -> Iterator[int]:
    controller = Controller(
        handler,
        hostname=LOCALHOST,
        port=free_port(),
        server_hostname="pipelining.test.invalid",
        decode_data=False,
        **options,
    )
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


def refusals(pipelining: bool) -> list[Outcome]:
    """Each refusal, each followed by a message that must go through on the same session."""
    handler = Handler(
        pipelining=pipelining,
        refuse_sender={"refused-sender@example.com": "553 5.1.8 Sender refused"},
        refuse_recipient={
            "nobody@example.com": "550 5.1.1 No such user",
            "later@example.com": "450 4.2.1 Try again later",
        },
        refuse_message={b"reject-me": "554 5.7.1 Message refused"},
    )
    steps: list[tuple[str, str, bytes]] = [
        ("ada@example.com", "ada@example.com", message("first")),
        ("ada@example.com", "nobody@example.com", message("to-nobody")),
        ("ada@example.com", "bob@example.com", message("after-rcpt")),
        ("ada@example.com", "later@example.com", message("to-later")),
        ("ada@example.com", "bob@example.com", message("after-soft-rcpt")),
        ("ada@example.com", "bob@example.com", message("refused", b"reject-me\r\n")),
        ("ada@example.com", "bob@example.com", message("after-data")),
        ("refused-sender@example.com", "bob@example.com", message("bad-sender")),
        ("ada@example.com", "bob@example.com", message("after-mail")),
    ]

    async def main() -> list[Outcome]:
        session = await open_session(port)
        results = []
        try:
            for sender, recipient, data in steps:
                try:
                    reply = await transaction.send(session, sender, recipient, data)
                except aiosmtplib.SMTPRecipientsRefused as refused:
                    first = refused.recipients[0]
                    results.append(("SMTPRecipientsRefused", first.code, first.message))
                except aiosmtplib.SMTPResponseException as error:
                    results.append((type(error).__name__, error.code, error.message))
                else:
                    results.append(("sent", reply.code, reply.message))
                assert session.is_connected
            assert (session.pipeline is not None) is pipelining
        finally:
            await close_session(session)
        return results

    with aiosmtpd_server(handler) as port:
        results = run(main)
    sent_tags = [content.split(b"\r\n")[0] for _, content, _ in handler.taken]
    assert sent_tags == [
        b"Subject: " + tag
        for tag in (b"first", b"after-rcpt", b"after-soft-rcpt", b"after-data", b"after-mail")
    ]
    return results


def test_refusals_leave_the_pipelined_connection_ready_for_the_next_message() -> None:
    assert refusals(pipelining=True) == [
        ("sent", 250, "2.0.0 Queued as 42"),
        ("SMTPRecipientsRefused", 550, "5.1.1 No such user"),
        ("sent", 250, "2.0.0 Queued as 42"),
        ("SMTPRecipientsRefused", 450, "4.2.1 Try again later"),
        ("sent", 250, "2.0.0 Queued as 42"),
        ("SMTPDataError", 554, "5.7.1 Message refused"),
        ("sent", 250, "2.0.0 Queued as 42"),
        ("SMTPSenderRefused", 553, "5.1.8 Sender refused"),
        ("sent", 250, "2.0.0 Queued as 42"),
    ]


def test_pipelined_and_step_by_step_sends_report_the_same_outcomes() -> None:
    assert refusals(pipelining=True) == refusals(pipelining=False)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_pooled_pipelined_connections_over_tls_carry_their_share_then_quit(
    server_tls: ssl.SSLContext, ca_pem: str, security: str, loop: str
) -> None:
    handler = Handler()
    tls_options: dict[str, Any] = (
        {"tls_context": server_tls, "require_starttls": True}
        if security == "starttls"
        else {"ssl_context": server_tls}
    )

    async def main(port: int) -> list[bool]:
        endpoint = pooled_endpoint(
            port, security=security, ca_bundle=ca_pem, max_messages_per_connection=2
        )
        pool = ConnectionPool(endpoint, "client.test.invalid")
        pipelined = []
        try:
            for number in range(5):
                async with pool.connection() as session:
                    await transaction.send(
                        session, SENDER, "ada@example.com", message(f"m{number}")
                    )
                    pipelined.append(session.pipeline is not None)
        finally:
            await pool.close()
        return pipelined

    with aiosmtpd_server(handler, **tls_options) as port:
        pipelined = run(lambda: main(port), loop)

    assert pipelined == [True] * 5
    assert [tls for *_, tls in handler.taken] == [True] * 5
    assert len({session for session, *_ in handler.taken}) == 3
    assert handler.quits == 3


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_message_leaves_its_pooled_connection_for_the_next(pipelining: bool) -> None:
    """A hard bounce in a newsletter must not cost a new connection (TCP, EHLO, TLS, AUTH)
    for the next message; a 421 (the server is leaving) still does."""
    handler = Handler(
        pipelining=pipelining,
        refuse_recipient={
            "nobody@example.com": "550 5.1.1 No such user",
            "closing@example.com": "421 4.3.2 Shutting down",
        },
    )
    recipients = ["ada@example.com", "nobody@example.com", "bob@example.com"]
    recipients += ["closing@example.com", "eve@example.com"]

    async def main(port: int) -> list[str]:
        endpoint = pooled_endpoint(port)
        pool = ConnectionPool(endpoint, "client.test.invalid")
        outcomes = []
        try:
            for number, recipient in enumerate(recipients):
                try:
                    async with pool.connection() as session:
                        await transaction.send(session, SENDER, recipient, message(f"m{number}"))
                except aiosmtplib.SMTPRecipientsRefused as refused:
                    outcomes.append(str(refused.recipients[0].code))
                else:
                    outcomes.append("sent")
        finally:
            await pool.close()
        return outcomes

    with aiosmtpd_server(handler) as port:
        outcomes = run(lambda: main(port))

    assert outcomes == ["sent", "550", "sent", "421", "sent"]
    assert handler.greetings == 2, "one connection until the 421, then a new one"


def test_a_pooled_connection_whose_server_hung_up_is_replaced(start_sink: StartSink) -> None:
    sink = start_sink("-q", ".")

    async def main() -> list[str]:
        endpoint = pooled_endpoint(sink.port)
        pool = ConnectionPool(endpoint, "client.test.invalid")
        results = []
        try:
            for number in range(3):
                try:
                    async with pool.connection() as session:
                        await transaction.send(
                            session, SENDER, "ada@example.com", message(f"m{number}")
                        )
                except aiosmtplib.SMTPServerDisconnected:
                    results.append("lost")
        finally:
            await pool.close()
        return results

    assert run(main) == ["lost"] * 3
    assert sorted(sink.message_ids()) == [f"<m{n}@test.invalid>" for n in range(3)]


# --- a busy pooled connection: each message opens the next one's transaction -------------


async def send_together(
    pool: ConnectionPool, letters: list[tuple[str, bytes]], cancel: int | None = None
) -> list[str]:
    """Send the letters (recipient, message) at once through `pool`, as the worker does:
    each waits for its turn with its opening. With `cancel`, that letter is cancelled a
    moment after the first has written its content. Returns each one's outcome."""

    async def send(recipient: str, data: bytes) -> str:
        addresses = transaction.envelope(SENDER, recipient)
        try:
            async with pool.connection(transaction.opening(addresses, data)) as session:
                reply = await transaction.send_enveloped(session, addresses, data)
        except aiosmtplib.SMTPRecipientsRefused as refused:
            return str(refused.recipients[0].code)
        except aiosmtplib.SMTPResponseException as error:
            return str(error.code)
        except aiosmtplib.SMTPServerDisconnected:
            return "lost"
        return reply.message

    tasks = [asyncio.create_task(send(*letter)) for letter in letters]
    if cancel is not None:
        await asyncio.sleep(0.2)
        tasks[cancel].cancel()
    try:
        done = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await pool.close()
    return [
        "cancelled" if isinstance(result, asyncio.CancelledError) else result for result in done
    ]


def test_the_next_message_opens_before_the_server_answers_the_final_dot() -> None:
    """One round trip per message: the peer holds back its reply to each final dot until
    it has heard the next message's MAIL, RCPT and DATA, which only a client that writes
    them together with the content gets past."""
    letters = [(f"m{n}@example.com", message(f"m{n}")) for n in range(3)]

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        await read_lines(reader, heard, 3)
        writer.write(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
        for number, (_, data) in enumerate(letters):
            await read_lines(reader, heard, data.count(b"\n") + 1)
            if number + 1 < len(letters):
                await read_lines(reader, heard, 3)
                writer.write(b"250 taken m%d\r\n250 ok\r\n250 ok\r\n354 go ahead\r\n" % number)
            else:
                writer.write(b"250 taken m%d\r\n" % number)
        await read_lines(reader, heard, 1)
        writer.write(b"221 bye\r\n")

    outcomes: list[str] = []

    async def client(port: int) -> None:
        pool = ConnectionPool(pooled_endpoint(port, timeout=2.0), "client.test.invalid")
        outcomes.extend(await send_together(pool, letters))

    heard = run(lambda: scripted(script, client))

    assert outcomes == ["taken m0", "taken m1", "taken m2"]
    expected: list[bytes] = []
    for recipient, data in letters:
        expected += [
            b"MAIL FROM:<news@example.com> SIZE=%d\r\n" % len(data),
            b"RCPT TO:<%s>\r\n" % recipient.encode(),
            b"DATA\r\n",
            *data.splitlines(keepends=True),
            b".\r\n",
        ]
    assert heard == [*expected, b"QUIT\r\n"]


def test_a_refused_message_does_not_disturb_the_next_one_already_opened() -> None:
    handler = Handler(refuse_message={b"reject-me": "554 5.7.1 Message refused"})
    letters = [
        ("m0@example.com", message("m0")),
        ("m1@example.com", message("m1", b"reject-me\r\n")),
        ("m2@example.com", message("m2")),
        ("m3@example.com", message("m3")),
    ]

    with aiosmtpd_server(handler) as port:
        pool = ConnectionPool(pooled_endpoint(port), "client.test.invalid")
        outcomes = run(lambda: send_together(pool, letters))

    assert outcomes == ["2.0.0 Queued as 42", "554", "2.0.0 Queued as 42", "2.0.0 Queued as 42"]
    assert [content.split(b"\r\n")[0] for _, content, _ in handler.taken] == [
        b"Subject: m0",
        b"Subject: m2",
        b"Subject: m3",
    ]
    assert handler.greetings == 1


@pytest.mark.parametrize("loop", LOOPS)
def test_a_message_cancelled_after_its_opening_went_ahead_is_never_sent(loop: str) -> None:
    """The worker stops while a message waits for the connection its opening is on: that
    connection is closed with the transaction half-open, so the server takes nothing for
    it, and the message after it goes on a new connection, intact."""
    handler = Handler(slow_message={b"slow": 0.5})
    letters = [
        ("m0@example.com", message("m0", b"slow\r\n")),
        ("m1@example.com", message("m1")),
        ("m2@example.com", message("m2")),
    ]

    with aiosmtpd_server(handler) as port:
        pool = ConnectionPool(pooled_endpoint(port), "client.test.invalid")
        outcomes = run(lambda: send_together(pool, letters, cancel=1), loop)

    assert outcomes == ["2.0.0 Queued as 42", "cancelled", "2.0.0 Queued as 42"]
    taken = [content for _, content, _ in handler.taken]
    assert [content.split(b"\r\n")[0] for content in taken] == [b"Subject: m0", b"Subject: m2"]
    assert taken[1] == letters[2][1]
    assert handler.greetings == 2


def test_busy_connections_still_carry_only_their_share() -> None:
    handler = Handler()
    letters = [(f"m{n}@example.com", message(f"m{n}")) for n in range(5)]

    with aiosmtpd_server(handler) as port:
        endpoint = pooled_endpoint(port, max_messages_per_connection=2)
        pool = ConnectionPool(endpoint, "client.test.invalid")
        outcomes = run(lambda: send_together(pool, letters))

    assert outcomes == ["2.0.0 Queued as 42"] * 5
    per_connection = Counter(peer for peer, *_ in handler.taken)
    assert sorted(per_connection.values()) == [1, 2, 2]
    assert handler.greetings == 3
    assert handler.quits == 3


def test_a_hang_up_after_each_final_dot_loses_no_message_and_doubles_none(
    start_sink: StartSink,
) -> None:
    """The next message's opening dies with the connection; it opens again on a new one."""
    sink = start_sink("-q", ".")
    letters = [(f"m{n}@example.com", message(f"m{n}")) for n in range(4)]

    pool = ConnectionPool(pooled_endpoint(sink.port), "client.test.invalid")
    outcomes = run(lambda: send_together(pool, letters))

    assert outcomes == ["lost"] * 4
    assert sink.message_ids() == {f"<m{n}@test.invalid>": 1 for n in range(4)}


def test_commands_written_while_replies_are_owed_never_go_out() -> None:
    """Replies owed to commands written earlier would answer the new ones: the connection
    is out of step and ends before a byte of them is written."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        heard.append(await reader.read())  # until the client closes

    results: list[list[aiosmtplib.SMTPResponse]] = []

    async def client(port: int) -> None:
        session = await open_session(port)
        session.pipeline = Pipeline.take_over(session.client)
        results.append(await session.pipeline.exchange(b"NOOP\r\n", 0, then=1))
        results.append(await session.pipeline.exchange(b"RSET\r\n", 1))
        assert not session.is_connected
        await close_session(session)

    heard = run(lambda: scripted(script, client))

    assert results == [[], []]
    assert heard == [b"NOOP\r\n"]


# --- a scripted peer: what real servers do only now and then ------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 scripted ESMTP\r\n")
    await reader.readline()
    writer.write(b"250-scripted.test.invalid\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")


async def read_lines(reader: asyncio.StreamReader, heard: list[bytes], count: int) -> None:
    for _ in range(count):
        heard.append(await reader.readline())


async def scripted(script: Script, client: Callable[[int], Awaitable[Any]]) -> list[bytes]:
    """Run `client` against a peer that greets, announces PIPELINING and then follows
    `script`; returns every line the peer read after EHLO."""
    heard: list[bytes] = []
    served = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await greet(reader, writer)
            await script(reader, writer, heard)
            await writer.drain()
        finally:
            writer.close()
            served.set_result(None)

    server = await asyncio.start_server(serve, LOCALHOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await client(port)
        await asyncio.wait_for(served, 5)
    return heard


def test_multi_line_replies_arriving_in_pieces_are_read_whole() -> None:
    data = message("pieces")

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        await read_lines(reader, heard, 3)
        replies = b"250-sender\r\n250 ok\r\n250-recipient\r\n250 ok\r\n354-go\r\n354 ahead\r\n"
        for byte in replies:
            writer.write(bytes([byte]))
            await writer.drain()
        await read_lines(reader, heard, data.count(b"\n") + 1)
        writer.write(b"250-2.0.0 queued\r\n250 2.0.0 as X1\r\n")
        await read_lines(reader, heard, 1)
        writer.write(b"221 bye\r\n")

    async def client(port: int) -> None:
        session = await open_session(port)
        try:
            assert await outcome(session, "ada@example.com", data) == (
                "sent",
                250,
                "2.0.0 queued\n2.0.0 as X1",
            )
        finally:
            await close_session(session)

    heard = run(lambda: scripted(script, client))

    assert heard[:3] == [
        b"MAIL FROM:<news@example.com> SIZE=%d\r\n" % len(data),
        b"RCPT TO:<ada@example.com>\r\n",
        b"DATA\r\n",
    ]
    assert heard[-1] == b"QUIT\r\n"


def test_a_354_after_a_refused_recipient_gets_a_lone_dot_not_the_message() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        await read_lines(reader, heard, 3)
        writer.write(b"250 ok\r\n550 5.1.1 no such user\r\n354 go ahead anyway\r\n")
        await read_lines(reader, heard, 2)
        writer.write(b"554 5.5.1 no valid recipients\r\n250 reset\r\n")
        await read_lines(reader, heard, 3)
        writer.write(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
        await read_lines(reader, heard, message("next").count(b"\n") + 1)
        writer.write(b"250 taken\r\n")

    async def client(port: int) -> None:
        session = await open_session(port)
        try:
            assert await outcome(session, "nobody@example.com", message("nope")) == (
                "SMTPRecipientsRefused",
                550,
                "5.1.1 no such user",
            )
            assert await outcome(session, "ada@example.com", message("next")) == (
                "sent",
                250,
                "taken",
            )
        finally:
            session.client.close()

    heard = run(lambda: scripted(script, client))

    assert heard[3:5] == [b".\r\n", b"RSET\r\n"]
    assert b"Subject: nope\r\n" not in heard


def test_a_refused_data_command_is_reset_and_the_message_not_sent() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        await read_lines(reader, heard, 3)
        writer.write(b"250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n")
        await read_lines(reader, heard, 1)
        writer.write(b"250 reset\r\n")
        await read_lines(reader, heard, 1)

    async def client(port: int) -> None:
        session = await open_session(port)
        try:
            assert await outcome(session, "ada@example.com", message("later")) == (
                "SMTPDataError",
                451,
                "4.3.0 try later",
            )
            assert session.is_connected
        finally:
            session.client.close()

    heard = run(lambda: scripted(script, client))

    assert heard[3] == b"RSET\r\n"
    assert heard[4] == b""  # nothing more: the message was not sent


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        (b"", ("SMTPServerDisconnected", None, "Unexpected EOF received")),
        (b"250 ok\r\n", ("SMTPServerDisconnected", None, "Unexpected EOF received")),
        (b"250 ok\r\n250 ok\r\n", ("SMTPServerDisconnected", None, "Unexpected EOF received")),
        (b"421 4.3.2 shutting down\r\n", ("SMTPSenderRefused", 421, "4.3.2 shutting down")),
        (
            b"250 ok\r\n550 5.1.1 no such user\r\n",
            ("SMTPRecipientsRefused", 550, "5.1.1 no such user"),
        ),
    ],
    ids=["before-any-reply", "after-mail", "after-rcpt", "421-at-mail", "refused-then-gone"],
)
def test_a_hang_up_mid_group_reports_what_came_before_it(replies: bytes, expected: Outcome) -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        await read_lines(reader, heard, 3)
        writer.write(replies)

    async def client(port: int) -> None:
        session = await open_session(port)
        try:
            assert await outcome(session, "ada@example.com", message("gone")) == expected
            assert not session.is_connected
        finally:
            await close_session(session)

    run(lambda: scripted(script, client))


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("answered_first", [0, 1], ids=["at-once", "after-one-message"])
def test_a_silent_server_times_out_and_the_connection_is_closed(
    loop: str, answered_first: int
) -> None:
    timeout = 0.3

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        for _ in range(answered_first):
            await read_lines(reader, heard, 3)
            writer.write(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
            await read_lines(reader, heard, message("answered").count(b"\n") + 1)
            writer.write(b"250 taken\r\n")
        await read_lines(reader, heard, 3)
        heard.append(await reader.read())  # until the client closes

    waited: list[float] = []

    async def client(port: int) -> None:
        session = await open_session(port, timeout=timeout)
        try:
            for _ in range(answered_first):
                assert (await outcome(session, "ada@example.com", message("answered")))[0] == (
                    "sent"
                )
                # Most of a timeout later: a timer left from the answered message is due
                # before the next message's own deadline.
                await asyncio.sleep(timeout * 0.7)
            began = time.monotonic()
            assert await outcome(session, "ada@example.com", message("silence")) == (
                "SMTPReadTimeoutError",
                None,
                "Timed out waiting for server response",
            )
            waited.append(time.monotonic() - began)
            assert not session.is_connected
        finally:
            await close_session(session)

    heard = run(lambda: scripted(script, client), loop)

    assert heard[-1] == b""  # closed without a QUIT: replies could no longer be matched
    assert timeout * 0.9 <= waited[0] < timeout * 3


def test_an_unsolicited_reply_between_messages_is_not_taken_for_the_next_ones() -> None:
    first, second = message("first"), message("second")

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        for data, replies in ((first, b"250 first\r\n250 nobody asked\r\n"), (second, b"")):
            await read_lines(reader, heard, 3)
            writer.write(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
            await read_lines(reader, heard, data.count(b"\n") + 1)
            writer.write(replies or b"250 second\r\n")
            await writer.drain()

    async def client(port: int) -> None:
        session = await open_session(port)
        try:
            assert await outcome(session, "ada@example.com", first) == ("sent", 250, "first")
            await asyncio.sleep(0.05)
            assert await outcome(session, "ada@example.com", second) == ("sent", 250, "second")
        finally:
            session.client.close()

    run(lambda: scripted(script, client))
