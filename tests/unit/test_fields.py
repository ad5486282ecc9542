"""Validated field types: what may go into a header, an envelope or a host setting."""

from __future__ import annotations

from email.headerregistry import Address
from email.policy import default
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from postyard.api.fields import EmailAddress, Host, Mailbox

MAILBOX: TypeAdapter[str] = TypeAdapter(Mailbox)
HOST: TypeAdapter[str] = TypeAdapter(Host)
EMAIL: TypeAdapter[str] = TypeAdapter(EmailAddress)


def refused(adapter: TypeAdapter[Any], value: str) -> str:
    """Validate `value`, expecting a refusal; returns the error text."""
    with pytest.raises(ValidationError) as error:
        adapter.validate_python(value)
    return str(error.value)


# --- Mailbox -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("news@example.com", "news@example.com"),
        ("Acme News <news@example.com>", "Acme News <news@example.com>"),
        ('"Doe, Jane" <jane@example.com>', '"Doe, Jane" <jane@example.com>'),
        ("<news@example.com>", "news@example.com"),
        ("News@Example.COM", "news@example.com"),
    ],
)
def test_mailbox_accepts_plain_and_display_name_forms(value: str, expected: str) -> None:
    assert MAILBOX.validate_python(value) == expected


def test_mailbox_keeps_a_non_ascii_display_name_recoverable() -> None:
    stored = MAILBOX.validate_python("Grüße GmbH <hallo@example.com>")
    assert "\n" not in stored and "\r" not in stored
    # The stored form is header-safe; a header parser recovers the name and address.
    header = default.header_factory("From", stored)
    (address,) = header.addresses
    assert isinstance(address, Address)
    assert (address.display_name, address.addr_spec) == ("Grüße GmbH", "hallo@example.com")


@pytest.mark.parametrize(
    "value",
    [
        "news@example.com\r\nBcc: victim@example.com",
        "news@example.com\nBcc: victim@example.com",
        "Acme\r<news@example.com>",
        "Acme News\n <news@example.com>",
    ],
    ids=["crlf-bcc", "lf-bcc", "cr-in-name", "folded"],
)
def test_mailbox_refuses_cr_and_lf(value: str) -> None:
    assert "single line" in refused(MAILBOX, value)


@pytest.mark.parametrize(
    "value",
    [
        "a@example.com, b@example.com",
        "Ann <a@example.com>, Bob <b@example.com>",
        "a@example.com; b@example.com",
    ],
)
def test_mailbox_refuses_more_than_one_address(value: str) -> None:
    refused(MAILBOX, value)


@pytest.mark.parametrize(
    "value",
    ["", "   ", "not an address", "@", "a@", "@example.com", "<>", "Acme News", "a@@example.com"],
)
def test_mailbox_refuses_garbage(value: str) -> None:
    refused(MAILBOX, value)


def test_mailbox_refuses_an_overlong_value() -> None:
    refused(MAILBOX, "A" * 990 + " <a@example.com>")


# --- Host ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("smtp.example.com", "smtp.example.com"),
        ("SMTP.Example.COM", "smtp.example.com"),
        ("smtp.example.com.", "smtp.example.com"),
        ("  mail.example.com  ", "mail.example.com"),
        ("localhost", "localhost"),
        ("mx-1.eu-west.example.net", "mx-1.eu-west.example.net"),
        ("127.0.0.1", "127.0.0.1"),
        ("192.0.2.25", "192.0.2.25"),
        ("::1", "::1"),
        ("2001:DB8::25", "2001:db8::25"),
    ],
)
def test_host_accepts_names_and_ip_addresses_in_canonical_form(value: str, expected: str) -> None:
    assert HOST.validate_python(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "smtp example.com",
        "_",
        "___",
        "smtp_relay.example.com",
        "-smtp.example.com",
        "smtp-.example.com",
        "smtp..example.com",
        "smtp.example.com/path",
        "smtp://smtp.example.com",
        "smtp.example.com:587",
        "a" * 64 + ".example.com",
        "smtp.example.com\r\nX: y",
    ],
)
def test_host_refuses_what_is_not_a_host_name_or_ip(value: str) -> None:
    refused(HOST, value)


# --- EmailAddress --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("jane@example.com", "jane@example.com"), ("Jane@EXAMPLE.com", "Jane@example.com")],
)
def test_email_address_accepts_and_normalizes_a_bare_address(value: str, expected: str) -> None:
    assert EMAIL.validate_python(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plainaddress",
        "a@b@example.com",
        "jane@",
        "@example.com",
        "jane doe@example.com",
        "Jane <jane@example.com>",
        "jane@example.com\r\nBcc: victim@example.com",
        "jane@localhost",
        "a" * 320 + "@example.com",
    ],
)
def test_email_address_refuses_invalid(value: str) -> None:
    refused(EMAIL, value)
