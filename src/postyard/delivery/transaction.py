"""One SMTP mail transaction (MAIL, RCPT, DATA) for one recipient, over a pooled session.

aiosmtplib's `sendmail` serves any caller: it parses every address with
`email.utils.parseaddr` four times per message (to validate, then to quote, for the
sender and for each recipient), builds option lists and takes a lock. Postyard sends
one recipient per transaction over a connection the pool lends to one task at a time,
and its envelope addresses repeat or are plain addresses, so this module writes the
same commands with the address parsing cached or skipped; on a 2 KB message that was
most of the client's CPU per message.

It raises what `sendmail` raises, so callers classify replies the same way:
`SMTPSenderRefused` (MAIL), `SMTPRecipientsRefused` (RCPT), `SMTPDataError` (DATA),
`SMTPServerDisconnected` and `SMTPTimeoutError`; after a refusal it resets the envelope
(RSET) so the connection can carry the next message. It returns the DATA reply with its
code, which `sendmail` drops.

When the server offers PIPELINING (RFC 2920), the session's connection is handed to a
`Pipeline` after EHLO: MAIL, RCPT and DATA go in one write and the message in a second,
two round trips instead of four. On a busy pooled connection the next message's MAIL,
RCPT and DATA follow this one's final dot in that second write (`Session.next_in_line`):
one round trip per message. aiosmtplib's protocol reads one reply per command it wrote,
so a server without PIPELINING keeps its one-command-at-a-time path.
"""

from __future__ import annotations

import re
from contextlib import suppress
from functools import lru_cache
from typing import NamedTuple

import aiosmtplib
from aiosmtplib.email import parse_address
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, normalize_message_line_endings

from postyard.delivery.pool import Opening, Session
from postyard.delivery.smtp_pipeline import Pipeline

__all__ = ["Envelope", "envelope", "envelope_address", "opening", "send", "send_enveloped"]

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_ATOM = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
# A bare ASCII addr-spec needs no parsing: it is its own envelope address.
_BARE_ADDRESS = re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}")
_ACCEPTED_RCPT = frozenset({250, 251})
_OPENING_REPLIES = 3
"""MAIL, RCPT and DATA: the replies that answer a message's opening."""
_START_INPUT = 354


def envelope_address(mailbox: str) -> str:
    """The address for MAIL FROM or RCPT TO of a header-style mailbox
    (`a@example.com` or `Name <a@example.com>`), as aiosmtplib's `parse_address`
    reads it; raises ValueError for one that cannot go on a command line."""
    if _BARE_ADDRESS.fullmatch(mailbox):
        return mailbox
    return _parsed(mailbox)


@lru_cache(maxsize=1024)
def _parsed(mailbox: str) -> str:
    """Senders repeat (one From per campaign): each is parsed once per process.

    Refuses what aiosmtplib's `execute_command` refuses, which the pipelined path skips."""
    address = parse_address(mailbox)
    if COMMAND_INJECTION_REGEX.search(address.encode("utf-8", "surrogateescape")):
        raise ValueError("Command arg contains a prohibited control character")
    return address


class Envelope(NamedTuple):
    """The mailboxes of one message as its headers give them, and their addresses as MAIL
    FROM and RCPT TO carry them."""

    sender: str
    recipient: str
    mail_from: bytes
    rcpt_to: bytes


def envelope(sender: str, recipient: str) -> Envelope:
    """The envelope of a message; raises ValueError for a mailbox that cannot go on a
    command line, or one that is not ASCII (that would need SMTPUTF8)."""
    return Envelope(sender, recipient, _command_address(sender), _command_address(recipient))


def opening(addresses: Envelope, message: bytes) -> Opening:
    """What a message brings to its wait for a connection, so that the message before it
    on that connection can open its transaction (`pool.Opening`)."""
    return Opening(addresses.mail_from, addresses.rcpt_to, len(message))


def _command_address(mailbox: str) -> bytes:
    address = envelope_address(mailbox)
    if not address.isascii():
        raise ValueError(f"{address!r} is not ASCII: sending to it needs SMTPUTF8")
    return address.encode("ascii")


async def send(
    session: Session, sender: str, recipient: str, message: bytes
) -> aiosmtplib.SMTPResponse:
    """Send `message` (CRLF line ends, as `build_message` writes) from `sender` to
    `recipient` (mailboxes as in the message's headers); returns the DATA reply."""
    return await send_enveloped(session, envelope(sender, recipient), message)


async def send_enveloped(
    session: Session, addresses: Envelope, message: bytes
) -> aiosmtplib.SMTPResponse:
    """`send` with the envelope already worked out: the worker checks it before it takes a
    connection, and need not parse the addresses twice."""
    sender, recipient, mail_from, rcpt_to = addresses
    pipeline = session.pipeline
    if pipeline is None:
        client = session.client
        if client.is_ehlo_or_helo_needed:
            await _greet(client)
        if not client.supports_extension("pipelining"):
            return await _send_step_by_step(client, mail_from, rcpt_to, sender, recipient, message)
        pipeline = session.pipeline = Pipeline.take_over(client)
    if session.opened_ahead:
        session.opened_ahead = False
        replies = await pipeline.collect(_OPENING_REPLIES)
    else:
        replies = await pipeline.exchange(
            _opening(session, opening(addresses, message)), _OPENING_REPLIES
        )
    try:
        _check_envelope(pipeline, replies, sender, recipient)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        await _reset_pipeline(pipeline, data_open=_data_open(replies))
        raise
    data = _data_lines(message)
    following = session.next_in_line()
    if following is None:
        replies = await pipeline.exchange(data, 1)
    else:
        replies = await pipeline.exchange(
            data + _opening(session, following), 1, then=_OPENING_REPLIES
        )
    if not replies:
        raise pipeline.failure()
    if replies[0].code != 250:
        if following is None:  # else the transaction is over all the same (RFC 5321 4.1.1.4)
            await _reset_pipeline(pipeline, data_open=False)
        raise aiosmtplib.SMTPDataError(replies[0].code, replies[0].message)
    return replies[0]


def _opening(session: Session, opening: Opening) -> bytes:
    """MAIL, RCPT and DATA for one message, to be written in one group."""
    size = b" SIZE=%d" % opening.size if session.client.supports_extension("size") else b""
    return b"MAIL FROM:<%s>%s\r\nRCPT TO:<%s>\r\nDATA\r\n" % (
        opening.mail_from,
        size,
        opening.rcpt_to,
    )


def _check_envelope(
    pipeline: Pipeline, replies: list[aiosmtplib.SMTPResponse], sender: str, recipient: str
) -> None:
    """Raise for the first of MAIL, RCPT and DATA refused, as the step-by-step path would
    have stopped there; or for the first reply missing, the connection having ended."""
    if not replies:
        raise pipeline.failure()
    _check_mail(replies[0], sender)
    if len(replies) < 2:
        raise pipeline.failure()
    _check_rcpt(replies[1], recipient)
    if len(replies) < 3:
        raise pipeline.failure()
    if replies[2].code != _START_INPUT:
        raise aiosmtplib.SMTPDataError(replies[2].code, replies[2].message)


def _check_mail(reply: aiosmtplib.SMTPResponse, sender: str) -> None:
    """Raise as aiosmtplib's `sendmail` does for a refused MAIL FROM."""
    if reply.code != 250:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)


def _check_rcpt(reply: aiosmtplib.SMTPResponse, recipient: str) -> None:
    """Raise as aiosmtplib's `sendmail` does for a refused RCPT TO (its only recipient)."""
    if reply.code not in _ACCEPTED_RCPT:
        raise aiosmtplib.SMTPRecipientsRefused(
            [aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)]
        )


def _data_open(replies: list[aiosmtplib.SMTPResponse]) -> bool:
    """Whether DATA was accepted (354) though the body will not follow: RFC 2920 §3.1 has
    the client then end the message with a lone dot, and a refused envelope makes the
    server take no message from it."""
    return len(replies) == 3 and replies[2].code == _START_INPUT


def _data_lines(message: bytes) -> bytes:
    """`message` as DATA carries it: CRLF line ends, a "." doubled at the start of a
    line, ended by CRLF.CRLF; what aiosmtplib's `data` writes, without its regular
    expressions on a message that already has CRLF line ends only."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = normalize_message_line_endings(message)
    message = message.replace(b"\r\n.", b"\r\n..")
    if message.startswith(b"."):
        message = b"." + message
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


async def _reset_pipeline(pipeline: Pipeline, *, data_open: bool) -> None:
    """End an opened DATA with a lone dot, then RSET; a failed reset is not the error to
    report (the connection then reads as closed and the pool drops it)."""
    if pipeline.is_connected:
        commands = b".\r\nRSET\r\n" if data_open else b"RSET\r\n"
        await pipeline.exchange(commands, 2 if data_open else 1)


async def _send_step_by_step(
    client: aiosmtplib.SMTP,
    mail_from: bytes,
    rcpt_to: bytes,
    sender: str,
    recipient: str,
    message: bytes,
) -> aiosmtplib.SMTPResponse:
    """One command, one reply, for a server that does not take commands in groups."""
    options = [b"SIZE=%d" % len(message)] if client.supports_extension("size") else []
    try:
        reply = await client.execute_command(b"MAIL", b"FROM:<" + mail_from + b">", *options)
        _check_mail(reply, sender)
        reply = await client.execute_command(b"RCPT", b"TO:<" + rcpt_to + b">")
        _check_rcpt(reply, recipient)
        return await client.data(message)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        await _reset(client)
        raise


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO from a server that refuses it, as `sendmail` does on a new session."""
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refusal; a failed reset is not the error to report."""
    if client.is_connected:
        with suppress(aiosmtplib.SMTPException, ConnectionError):
            await client.rset()
