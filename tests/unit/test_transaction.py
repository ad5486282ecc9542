"""Envelope addresses for the direct SMTP transaction: what aiosmtplib's `sendmail` would
put on MAIL FROM and RCPT TO, without parsing a plain address again for every message."""

from __future__ import annotations

import pytest
from aiosmtplib.email import parse_address

from postyard.delivery.transaction import envelope_address


@pytest.mark.parametrize(
    "mailbox",
    [
        "ada@example.com",
        "Ada Lovelace <ada@example.com>",
        '"Lovelace, Ada" <ada@example.com>',
        "=?utf-8?b?w4lsaXNl?= <elise@example.com>",
        "o'brien+news@mail.example.co.uk",
        " ada@example.com ",
    ],
)
def test_envelope_address_is_what_sendmail_sends(mailbox: str) -> None:
    assert envelope_address(mailbox) == parse_address(mailbox)


@pytest.mark.parametrize(
    "mailbox",
    ["Ada <ada@example.com\r\nRCPT TO:<x@example.com>>", "a\r\nb@example.com", "ada@example.com\n"],
)
def test_a_line_break_never_reaches_the_command_line(mailbox: str) -> None:
    address = envelope_address(mailbox)
    assert "\r" not in address and "\n" not in address
    assert address == parse_address(mailbox)
