"""The message data of the pipelined transaction: byte for byte what aiosmtplib's `data`
writes (line ends made CRLF, a leading "." doubled, CRLF.CRLF at the end), which the
pipelined path reaches without aiosmtplib's regular expressions."""

from __future__ import annotations

import itertools

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from postyard.delivery.transaction import _data_lines


def as_aiosmtplib_writes(message: bytes) -> bytes:
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


@pytest.mark.parametrize(
    "message",
    [
        b"Subject: s\r\n\r\nbody\r\n",
        b"Subject: s\r\n\r\n.hidden\r\n..two\r\n.\r\nafter\r\n",
        b".first line is a dot line\r\n",
        b"no line end at the end",
        b"ends with a lone dot\r\n.",
        b"bare LF\n.dot\rbare CR\r\n",
        b"",
        b".",
    ],
)
def test_message_data_is_what_aiosmtplib_writes(message: bytes) -> None:
    assert _data_lines(message) == as_aiosmtplib_writes(message)


def test_every_short_mix_of_dots_and_line_ends_is_written_as_aiosmtplib_would() -> None:
    for length in range(7):
        for parts in itertools.product([b".", b"\r", b"\n", b"a"], repeat=length):
            message = b"".join(parts)
            assert _data_lines(message) == as_aiosmtplib_writes(message), message
