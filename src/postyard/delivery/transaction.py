"""One SMTP mail transaction (MAIL, RCPT, DATA) for one recipient, over a pooled client.

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

Not pipelined (RFC 2920): aiosmtplib's protocol reads one reply per command it wrote,
and replies that arrive together would be lost to it.
"""

from __future__ import annotations

import re
from contextlib import suppress
from functools import lru_cache

import aiosmtplib
from aiosmtplib.email import parse_address

__all__ = ["envelope_address", "send"]

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_ATOM = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
# A bare ASCII addr-spec needs no parsing: it is its own envelope address.
_BARE_ADDRESS = re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}")
_ACCEPTED_RCPT = frozenset({250, 251})


def envelope_address(mailbox: str) -> str:
    """The address for MAIL FROM or RCPT TO of a header-style mailbox
    (`a@example.com` or `Name <a@example.com>`), as aiosmtplib's `parse_address`
    reads it; raises ValueError for one that cannot go on a command line."""
    if _BARE_ADDRESS.fullmatch(mailbox):
        return mailbox
    return _parsed(mailbox)


@lru_cache(maxsize=1024)
def _parsed(mailbox: str) -> str:
    """Senders repeat (one From per campaign): each is parsed once per process."""
    return parse_address(mailbox)


async def send(
    client: aiosmtplib.SMTP, sender: str, recipient: str, message: bytes
) -> aiosmtplib.SMTPResponse:
    """Send `message` (CRLF line ends, as `build_message` writes) from `sender` to
    `recipient` (mailboxes as in the message's headers); returns the DATA reply."""
    mail_from = envelope_address(sender).encode("ascii")
    rcpt_to = envelope_address(recipient).encode("ascii")
    if client.is_ehlo_or_helo_needed:
        await _greet(client)
    options = [b"SIZE=%d" % len(message)] if client.supports_extension("size") else []
    try:
        reply = await client.execute_command(b"MAIL", b"FROM:<" + mail_from + b">", *options)
        if reply.code != 250:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        reply = await client.execute_command(b"RCPT", b"TO:<" + rcpt_to + b">")
        if reply.code not in _ACCEPTED_RCPT:
            raise aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)]
            )
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
