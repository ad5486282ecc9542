"""The bytes a claimed delivery becomes on the wire (RFC 5322, RFC 2047)."""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any, cast

import pytest

from postyard.delivery.message import build_message
from postyard.delivery.outbox import Claimed

NOW = datetime(2024, 5, 1, 12, 30, 15)
BASE = Claimed(
    id=7,
    workspace_id=1,
    campaign_type="newsletter",
    to_address="Jane Doe <jane@example.com>",
    from_address="Acme News <news@acme.example.com>",
    reply_to=None,
    subject="Your weekly digest",
    text_body="Hello Jane,\nhere is the news.\n",
    html_body=None,
    headers=None,
    message_id="<0123456789abcdef@acme.example.com>",
    attempts=1,
    expires_at=datetime(2024, 5, 4, 12, 30, 15),
)


def claimed(**changes: Any) -> Claimed:
    return BASE._replace(**changes)


def parse(data: bytes) -> EmailMessage:
    return cast(EmailMessage, BytesParser(policy=email.policy.default).parsebytes(data))


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def test_required_headers_are_present_and_parse_back() -> None:
    message = parse(build_message(BASE, NOW))
    assert parseaddr(str(message["From"])) == ("Acme News", "news@acme.example.com")
    assert parseaddr(str(message["To"])) == ("Jane Doe", "jane@example.com")
    assert message["Subject"] == "Your weekly digest"
    assert message["Message-ID"] == "<0123456789abcdef@acme.example.com>"
    assert parsedate_to_datetime(str(message["Date"])) == NOW.replace(tzinfo=UTC)
    assert message["MIME-Version"] == "1.0"
    assert "Reply-To" not in message


def test_each_required_header_appears_exactly_once() -> None:
    message = parse(build_message(claimed(reply_to="help@acme.example.com"), NOW))
    for name in ("From", "To", "Subject", "Date", "Message-ID", "Reply-To"):
        assert len(message.get_all(name) or []) == 1, name


def test_reply_to_is_set_when_given() -> None:
    message = parse(build_message(claimed(reply_to="Help <help@acme.example.com>"), NOW))
    assert parseaddr(str(message["Reply-To"])) == ("Help", "help@acme.example.com")


def test_message_id_is_the_queued_one_on_every_build() -> None:
    first = parse(build_message(BASE, NOW))
    retry = parse(build_message(BASE._replace(attempts=5), datetime(2024, 5, 2)))
    assert first["Message-ID"] == retry["Message-ID"] == BASE.message_id


def test_lines_end_with_crlf_and_no_bare_cr_or_lf_is_sent() -> None:
    data = build_message(claimed(text_body="one\ntwo\r\nthree\n"), NOW)
    stripped = data.replace(b"\r\n", b"")
    assert b"\r" not in stripped
    assert b"\n" not in stripped


@pytest.mark.parametrize(
    "subject",
    [
        "Grüße aus Köln",
        "Скидки недели",
        "你好世界",
        "Emoji \N{PARTY POPPER} inside",
        "Café " * 30,
    ],
)
def test_non_ascii_subject_is_rfc2047_encoded_on_the_wire_and_decodes_back(subject: str) -> None:
    data = build_message(claimed(subject=subject), NOW)
    headers = header_block(data)
    assert headers.isascii()
    subject_lines = headers.split(b"\r\nSubject: ", 1)[1].split(b"\r\nDate:", 1)[0]
    assert b"=?utf-8?" in subject_lines.lower()
    assert parse(data)["Subject"] == subject


def test_non_ascii_display_names_are_encoded_and_decode_back() -> None:
    data = build_message(claimed(from_address="Café Crème <news@acme.example.com>"), NOW)
    assert header_block(data).isascii()
    assert parseaddr(str(parse(data)["From"])) == ("Café Crème", "news@acme.example.com")


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("x" * 2000, "y" * 5000),
        ("word " * 600, "a long line " * 500),
        ("é" * 1500, "ü" * 3000),
        ("Short", "z" * 998 + "\n" + "q" * 999),
    ],
    ids=["unbreakable-ascii", "words", "non-ascii", "at-the-limit"],
)
def test_no_line_exceeds_998_octets_and_long_content_survives(subject: str, body: str) -> None:
    data = build_message(claimed(subject=subject, text_body=body), NOW)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = parse(data)
    assert message["Subject"] == subject
    assert message.get_content().replace("\r\n", "\n").rstrip("\n") == body.rstrip("\n")


def test_long_html_line_is_wrapped_on_the_wire_and_survives() -> None:
    html = "<p>" + "z" * 5000 + "</p>"
    data = build_message(claimed(text_body=None, html_body=html), NOW)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert parse(data).get_content().rstrip("\r\n") == html


def test_text_and_html_make_a_multipart_alternative_with_text_first() -> None:
    message = parse(
        build_message(claimed(text_body="Plain words", html_body="<p>Rich words</p>"), NOW)
    )
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "Plain words"
    assert parts[1].get_content().strip() == "<p>Rich words</p>"


def test_html_only_is_a_single_html_part() -> None:
    message = parse(build_message(claimed(text_body=None, html_body="<p>Only HTML</p>"), NOW))
    assert message.get_content_type() == "text/html"
    assert not message.is_multipart()
    assert message.get_content().strip() == "<p>Only HTML</p>"


def test_text_only_is_a_single_plain_part_in_utf8() -> None:
    message = parse(build_message(claimed(text_body="Grüße, Jane"), NOW))
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message.get_content().strip() == "Grüße, Jane"


def test_no_body_at_all_is_an_empty_plain_text_message() -> None:
    message = parse(build_message(claimed(text_body=None, html_body=None), NOW))
    assert message.get_content_type() == "text/plain"
    assert message.get_content().strip() == ""


@pytest.mark.parametrize(
    "subject",
    [
        "Hello\r\nBcc: victim@example.com",
        "Hello\nBcc: victim@example.com",
        "Hello\rBcc: victim@example.com",
        "Hello\r\n\r\nInjected body",
    ],
    ids=["crlf", "lf", "cr", "body"],
)
def test_subject_with_cr_or_lf_is_refused_before_reaching_the_wire(subject: str) -> None:
    with pytest.raises(ValueError):
        build_message(claimed(subject=subject), NOW)


@pytest.mark.parametrize("field", ["to_address", "from_address", "reply_to"])
def test_address_header_with_cr_or_lf_is_refused(field: str) -> None:
    with pytest.raises(ValueError):
        build_message(claimed(**{field: "a@example.com\r\nBcc: victim@example.com"}), NOW)


def test_extra_headers_such_as_list_unsubscribe_reach_the_wire() -> None:
    headers = {
        "List-Unsubscribe": "<https://postyard.example/u/abc>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    parsed = parse(build_message(claimed(headers=headers), NOW))

    assert parsed["List-Unsubscribe"] == "<https://postyard.example/u/abc>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize("subject", ["Hello\n", "Hello\r\n", "Hello\r"], ids=repr)
def test_a_single_trailing_line_break_is_refused_too(subject: str) -> None:
    # The email package alone lets one through ("Hello\r\n" then ends the header block).
    with pytest.raises(ValueError):
        build_message(claimed(subject=subject), NOW)


@pytest.mark.parametrize(
    "headers",
    [
        {"List-Unsubscribe": "<https://x.example/u>\r\nBcc: victim@example.com"},
        {"List-Unsubscribe": "<https://x.example/u>\n"},
        {"X-Bad\r\nBcc": "victim@example.com"},
        {"X Bad": "value"},
    ],
    ids=["value-crlf", "value-trailing-lf", "name-crlf", "name-space"],
)
def test_extra_headers_cannot_inject_headers(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build_message(claimed(headers=headers), NOW)


def test_ascii_body_with_a_long_link_line_goes_out_7bit_and_unchanged() -> None:
    link = "Manage your preferences: https://acme.example/u/" + "ab" * 40
    body = f"Hello Jane,\n\n{link}\n"
    data = build_message(claimed(text_body=body), NOW)
    message = parse(data)
    assert message["Content-Transfer-Encoding"] == "7bit"
    assert link.encode() + b"\r\n" in data
    assert message.get_content().replace("\r\n", "\n") == body


def test_body_line_over_998_octets_goes_out_quoted_printable_within_76() -> None:
    body = "x" * 999 + "\n"
    data = build_message(claimed(text_body=body), NOW)
    message = parse(data)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert max(len(line) for line in data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")) <= 76
    assert message.get_content().replace("\r\n", "\n") == body


def test_multipart_boundary_occurs_in_neither_part() -> None:
    text, html = "--=_ looks like a boundary\n", "<p>=_ --=_</p>"
    data = build_message(claimed(text_body=text, html_body=html), NOW)
    message = parse(data)
    boundary = message.get_boundary()
    assert boundary is not None
    assert boundary not in text
    assert boundary not in html
    parts = list(message.iter_parts())
    assert [part.get_content().replace("\r\n", "\n") for part in parts] == [text, html + "\n"]


def test_non_ascii_address_is_left_to_the_email_package_as_before() -> None:
    """SMTPUTF8 addresses are not sent by Postyard; the email package decides, as it did."""
    delivery = claimed(to_address="zoë@example.com")
    expected = EmailMessage(policy=email.policy.SMTP)
    expected["To"] = delivery.to_address
    data = build_message(delivery, NOW)
    assert data.isascii()
    assert bytes(expected).split(b"\r\n")[0] in data.split(b"\r\n")
