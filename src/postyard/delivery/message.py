"""Turning a claimed delivery into the bytes that go over the wire.

Two paths build the same message. The fast path writes the common case directly:
single mailboxes with a dot-atom address, subjects and extra headers of ordinary text,
text and/or HTML bodies. Anything it does not recognise as ordinary (groups, comments,
several addresses in one field, a non-ASCII address, control characters, text that looks
like an RFC 2047 encoded-word, a word too long to fit in a line, a header name the
email package would parse specially) is built by the `email` package instead, exactly as
before; each of those decisions is one regular-expression match or a string test.

What both paths guarantee (tests/unit/test_message*.py pin it):

- CRLF line endings, ASCII only on the wire, no line longer than 998 octets; header lines
  are folded at whitespace to 78 characters where there is whitespace to fold at.
- A CR or LF in any header value, or a header name that is not printable ASCII without
  a colon, is a ValueError before either path runs (the worker records render_error):
  a value can never add a header or end the header block.
- Non-ASCII header text goes out as RFC 2047 encoded-words (UTF-8, base64), each at most
  75 characters and holding whole characters, so any reader decodes the value exactly.
- Bodies: bare CR and LF become CRLF and the body ends with a line break; 7bit when the
  body is ASCII with no line over 998 octets, otherwise quoted-printable, or base64 when
  that is shorter (mostly non-Latin text), as the email package chooses.
"""

from __future__ import annotations

import base64
import binascii
import email.quoprimime
import os
import re
from datetime import UTC, datetime
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from functools import lru_cache
from typing import cast

from postyard.delivery.outbox import Claimed

__all__ = ["build_message"]

FOLD_AT = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters...
LINE_LIMIT = 998  # ...and MUST be at most 998, CRLF excluded.
QP_LINE_LIMIT = 76  # RFC 2045 6.7 (5): encoded lines at most 76 characters.

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_ATOM = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_ADDR_SPEC = rf"{_DOT_ATOM}@{_DOT_ATOM}"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PHRASE_WORD = rf"(?:[.{_ATEXT}]+|{_QUOTED})"
# One mailbox in plain ASCII: `addr@example.com` or `Name <addr@example.com>`, the name
# made of atoms (periods allowed, as people write "J. R. Smith") and quoted strings.
# Such a value is sent exactly as given; the email package sends it unchanged as well.
_ASCII_MAILBOX = re.compile(
    rf" *(?:{_ADDR_SPEC}|(?:{_PHRASE_WORD}(?: +{_PHRASE_WORD})* *)?<{_ADDR_SPEC}>) *"
)
# One mailbox with a non-ASCII display name, either one quoted string or plain words
# (no specials), and an ASCII address: the name is encoded, the address kept as is.
_INTL_MAILBOX = re.compile(
    rf'[ \t]*(?:(?P<quoted>{_QUOTED})|(?P<plain>[^ \t"()<>\[\]:;@\\,][^"()<>\[\]:;@\\,]*?))'
    rf"[ \t]*<(?P<addr>{_ADDR_SPEC})>[ \t]*"
)
_MESSAGE_ID = re.compile(r"<[!-;=?-~]+>")
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# Characters a header value may hold that the fast path leaves to the email package:
# controls (TAB aside; CR and LF are refused earlier), the characters str.splitlines()
# treats as line breaks, and "=?", which readers would take for an encoded-word.
_UNUSUAL = re.compile("[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]|=\\?")
_FOLD_POINT = re.compile(r"(?<=[^ \t])(?=[ \t]+[^ \t])")
_WSP_RUN = re.compile(r"[ \t]+")
_QUOTED_PAIR = re.compile(r"\\(.)")
# A non-ASCII display name goes out as one encoded-word (at most 75 characters), the
# only form that every reader decodes alike: RFC 2047 readers join adjacent encoded-words
# in a name without the space between them, Python's parser puts a space there, and it
# turns whitespace runs inside an encoded name into one space. Longer names and names
# with such spacing go the email package's way, as before.
_ONE_WORD = 75 - len("=?utf-8?b??=")
_SPACING = re.compile(r"^[ \t]|[ \t]$|[ \t][ \t]|\t")
# Headers this module writes itself, and those the email package parses by their
# structure (addresses, dates, MIME parameters): an extra header with one of these
# names goes the email package's way, which refuses duplicates of the singular ones.
# Content-* headers too: they describe the body this module writes.
_NOT_PLAIN = frozenset(HeaderRegistry().registry) | {"date", "message-id", "mime-version"}

_TEXT_PLAIN = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: '
_TEXT_HTML = b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: '

_date_cache: dict[datetime, str] = {}


def build_message(delivery: Claimed, now: datetime) -> bytes:
    """An RFC 5322 message: RFC 2047 for non-ASCII header text, lines within limits.

    Raises ValueError for a header value with CR or LF, or an invalid header name.
    """
    _refuse_line_breaks(delivery)
    try:
        data = _fast_message(delivery, now)
    except UnicodeEncodeError:  # a lone surrogate: the email package's decision, as before
        data = None
    if data is None:
        return _email_package_message(delivery, now)
    return data


def _refuse_line_breaks(delivery: Claimed) -> None:
    fields = [
        ("From", delivery.from_address),
        ("To", delivery.to_address),
        ("Reply-To", delivery.reply_to or ""),
        ("Subject", delivery.subject),
        ("Message-ID", delivery.message_id),
    ]
    for name, value in (delivery.headers or {}).items():
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        fields.append((name, value))
    for name, value in fields:
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} contains a line break (CR or LF)")


def _fast_message(delivery: Claimed, now: datetime) -> bytes | None:
    """The message written directly, or None when it holds anything unusual."""
    head: list[str | None] = [
        _sender_field("From", delivery.from_address),
        _mailbox_field("To", delivery.to_address),
    ]
    if delivery.reply_to:
        head.append(_sender_field("Reply-To", delivery.reply_to))
    head.append(_text_field("Subject", delivery.subject))
    head.append(_date_field(now))
    message_id = delivery.message_id
    if not (_MESSAGE_ID.fullmatch(message_id) and len(message_id) <= LINE_LIMIT - 12):
        return None
    head.append(f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\n")
    for name, value in (delivery.headers or {}).items():
        lowered = name.lower()
        if lowered in _NOT_PLAIN or lowered.startswith("content-") or len(name) > 76:
            return None
        head.append(_text_field(name, value))
    if None in head:
        return None
    header_block = "".join(cast(list[str], head)).encode("ascii")

    text, html = delivery.text_body, delivery.html_body
    if html is None:
        cte, body = _encode_body(text or "")
        return b"".join((header_block, _TEXT_PLAIN, cte, b"\r\n\r\n", body))
    if text is None:
        cte, body = _encode_body(html)
        return b"".join((header_block, _TEXT_HTML, cte, b"\r\n\r\n", body))
    text_cte, text_data = _encode_body(text)
    html_cte, html_data = _encode_body(html)
    boundary = _boundary(text_data, html_data)
    return b"".join(
        (
            header_block,
            b'Content-Type: multipart/alternative;\r\n boundary="',
            boundary,
            b'"\r\n\r\n--',
            boundary,
            b"\r\n",
            _TEXT_PLAIN,
            text_cte,
            b"\r\n\r\n",
            text_data,
            b"\r\n--",
            boundary,
            b"\r\n",
            _TEXT_HTML,
            html_cte,
            b"\r\n\r\n",
            html_data,
            b"\r\n--",
            boundary,
            b"--\r\n",
        )
    )


@lru_cache(maxsize=256)
def _sender_field(name: str, value: str) -> str | None:
    """From and Reply-To repeat in every message of a campaign: each is written once."""
    return _mailbox_field(name, value)


def _mailbox_field(name: str, value: str) -> str | None:
    if len(value) > LINE_LIMIT or _UNUSUAL.search(value):
        return None
    if value.isascii():
        return _fold(name, value) if _ASCII_MAILBOX.fullmatch(value) else None
    match = _INTL_MAILBOX.fullmatch(value)
    if match is None:
        return None
    quoted, address = match.group("quoted", "addr")
    if quoted is not None:
        display_name = _QUOTED_PAIR.sub(r"\1", quoted[1:-1])
        if _SPACING.search(display_name):
            return None
    else:
        # Readers take the words of an unquoted name with single spaces between them.
        display_name = " ".join(_WSP_RUN.split(match.group("plain")))
    encoded = binascii.b2a_base64(display_name.encode("utf-8"), newline=False)
    if len(encoded) > _ONE_WORD:
        return None
    word = f"=?utf-8?b?{encoded.decode('ascii')}?="
    if len(name) + len(word) + len(address) + 5 <= FOLD_AT:
        return f"{name}: {word} <{address}>\r\n"
    if len(address) + 3 > LINE_LIMIT:
        return None
    return f"{name}: {word}\r\n <{address}>\r\n"


def _text_field(name: str, value: str) -> str | None:
    """An unstructured header (Subject, List-Unsubscribe...): as is when ASCII, else encoded."""
    if _UNUSUAL.search(value):
        return None
    if value.isascii():
        return _fold(name, value)
    return "\r\n".join(_encoded_lines(name, value)) + "\r\n"


def _fold(name: str, value: str) -> str | None:
    """`Name: value`, folded before whitespace so lines keep within 78 where they can.

    Unfolding (removing each CRLF) gives the value back exactly. A fold never leaves a
    line of whitespace only. None when a word is too long for even 998 octets.
    """
    line = f"{name}: {value}"
    if len(line) <= FOLD_AT:
        return line + "\r\n"
    first, *rest = _FOLD_POINT.split(value)
    lines = [f"{name}: {first}"]  # never fold right after the colon: readers strip that
    for token in rest:
        if len(lines[-1]) + len(token) <= FOLD_AT:
            lines[-1] += token
        else:
            lines.append(token)
    if max(map(len, lines)) > LINE_LIMIT:
        return None
    return "\r\n".join(lines) + "\r\n"


def _encoded_lines(name: str, text: str) -> list[str]:
    """`Name: ` and `text` as RFC 2047 encoded-words, one per line, without line ends.

    Each word is at most 75 characters and holds whole UTF-8 characters, so it decodes
    on its own; readers join adjacent encoded-words without the folding between them.
    """
    raw = text.encode("utf-8")
    prefix = f"{name}: "
    # Raw bytes whose base64 fits the first line; at least one word's worth of room even
    # after a long header name (a fold right after the colon would add a space).
    budget = max((FOLD_AT - len(prefix) - len("=?utf-8?b??=")) // 4, 2) * 3
    lines = []
    start, size = 0, len(raw)
    while start < size:
        end = start + budget
        if end < size:
            while end > start and raw[end] & 0xC0 == 0x80:  # not inside a character
                end -= 1
            if end == start:
                end = start + 1
                while end < size and raw[end] & 0xC0 == 0x80:
                    end += 1
        word = binascii.b2a_base64(raw[start:end], newline=False).decode("ascii")
        lines.append(f"{prefix}=?utf-8?b?{word}?=")
        start, prefix, budget = end, " ", 45  # 45 bytes: 60 base64 chars, a 72-char word
    return lines


def _date_field(now: datetime) -> str:
    # format_datetime ignores microseconds; a worker builds many messages per second.
    key = now.replace(microsecond=0, tzinfo=None)
    field = _date_cache.get(key)
    if field is None:
        if len(_date_cache) > 64:
            _date_cache.clear()
        field = _date_cache[key] = f"Date: {format_datetime(key.replace(tzinfo=UTC))}\r\n"
    return field


def _encode_body(text: str) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, body with CRLF line ends ending in CRLF)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    if text.isascii() and "\0" not in text and _lines_within_limit(text):
        return b"7bit", text.encode("ascii").replace(b"\n", b"\r\n")
    raw = text.replace("\n", "\r\n").encode("utf-8")
    # binascii's C encoder, CRLF in and out (it follows the input's first line end).
    encoded = binascii.b2a_qp(raw, istext=True)
    if max(map(len, encoded.split(b"\r\n"))) > QP_LINE_LIMIT:
        # b2a_qp can exceed 76 by one when it encodes whitespace at the end of a line.
        encoded = email.quoprimime.body_encode(raw.decode("latin-1"), eol="\r\n").encode("ascii")
        if not encoded.endswith(b"\r\n"):
            encoded += b"\r\n"
    if len(encoded) > len(raw) * 4 // 3:  # mostly non-Latin text: base64 may be shorter
        wrapped = base64.encodebytes(raw).replace(b"\n", b"\r\n")
        if len(wrapped) < len(encoded):
            return b"base64", wrapped
    return b"quoted-printable", encoded


def _lines_within_limit(text: str) -> bool:
    """Whether no line of `text` (which ends with LF) is over 998 characters; it looks for
    a line end in each stretch of 999 characters instead of splitting every line."""
    start, size = 0, len(text)
    while size - start > LINE_LIMIT + 1:
        end = text.rfind("\n", start, start + LINE_LIMIT + 1)
        if end < 0:
            return False
        start = end + 1
    return True


def _boundary(*parts: bytes) -> bytes:
    """A multipart boundary found in none of the parts ("=_" cannot occur in QP or base64)."""
    while True:
        boundary = b"=_" + os.urandom(16).hex().encode("ascii")
        if not any(boundary in part for part in parts):
            return boundary


def _email_package_message(delivery: Claimed, now: datetime) -> bytes:
    """The general path: the email package parses, folds and encodes every header."""
    message = EmailMessage(policy=SMTP)
    message["From"] = delivery.from_address
    message["To"] = delivery.to_address
    if delivery.reply_to:
        message["Reply-To"] = delivery.reply_to
    message["Subject"] = delivery.subject
    message["Date"] = format_datetime(now.replace(tzinfo=UTC))
    message["Message-ID"] = delivery.message_id
    for name, value in (delivery.headers or {}).items():
        message[name] = value
    if delivery.text_body is not None or delivery.html_body is None:
        message.set_content(delivery.text_body or "")
        if delivery.html_body is not None:
            message.add_alternative(delivery.html_body, subtype="html")
    else:
        message.set_content(delivery.html_body, subtype="html")
    return message.as_bytes()
