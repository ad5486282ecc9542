"""Unsubscribe tokens: what one signs, and that no change to one goes unnoticed."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from postyard.secretbox import SecretBox
from postyard.services.unsubscribe import (
    UnsubscribeToken,
    make_token,
    read_token,
    unsubscribe_headers,
    unsubscribe_url,
)

BOX = SecretBox(Fernet.generate_key().decode())
TOKEN = UnsubscribeToken(workspace_id=3, person_pk=41, campaign_id=7)


def test_a_token_reads_back_as_made() -> None:
    assert read_token(BOX, make_token(BOX, TOKEN)) == TOKEN


def test_a_token_without_a_campaign_reads_back_without_one() -> None:
    token = UnsubscribeToken(workspace_id=3, person_pk=41, campaign_id=None)
    assert read_token(BOX, make_token(BOX, token)) == token


def test_a_token_is_url_safe_and_short() -> None:
    text = make_token(BOX, UnsubscribeToken(2**31 - 1, 2**31 - 1, 2**31 - 1))
    assert len(text) < 80
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in text)


@pytest.mark.parametrize(
    "changed",
    [
        UnsubscribeToken(workspace_id=4, person_pk=41, campaign_id=7),
        UnsubscribeToken(workspace_id=3, person_pk=42, campaign_id=7),
        UnsubscribeToken(workspace_id=3, person_pk=41, campaign_id=8),
        UnsubscribeToken(workspace_id=3, person_pk=41, campaign_id=None),
    ],
    ids=["workspace", "person", "campaign", "campaign-dropped"],
)
def test_changing_a_field_breaks_the_signature(changed: UnsubscribeToken) -> None:
    signature = make_token(BOX, TOKEN).rpartition(".")[2]
    assert read_token(BOX, f"{changed.message()}.{signature}") is None


def test_changing_the_signature_is_refused() -> None:
    text = make_token(BOX, TOKEN)
    last = text[-1]
    assert read_token(BOX, text[:-1] + ("A" if last != "A" else "B")) is None
    assert read_token(BOX, text[:-1]) is None
    assert read_token(BOX, text + "A") is None


def test_a_token_signed_under_another_key_is_refused() -> None:
    other = SecretBox(Fernet.generate_key().decode())
    assert read_token(BOX, make_token(other, TOKEN)) is None


def test_a_mac_made_for_another_purpose_is_refused() -> None:
    """The box signs other links too; only a MAC made for unsubscribing is accepted."""
    message = TOKEN.message()
    assert read_token(BOX, f"{message}.{BOX.sign(message)}") is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "...",
        "3.41.7",
        "3.41.signature",
        "3.41.7.8.signature",
        "-3.41.7.signature",
        "3.41.+7.signature",
        "3.4 1.7.signature",
        "3.41.7.sïgnature",  # hmac.compare_digest refuses non-ASCII strings with a TypeError
        "3.41.7.\x00",
        "٣.41.7.signature",  # an Arabic-Indic three: isdigit() says yes, the token no
        "³.41.7.signature",  # a superscript three: isdigit() says yes, int() raises
        "3.41.7/../../v1/smtp_servers",
        "x" * 10_000,
    ],
)
def test_malformed_text_is_refused_not_raised(text: str) -> None:
    assert read_token(BOX, text) is None


def test_the_url_and_headers_carry_the_token() -> None:
    url = unsubscribe_url("https://mail.acme.example/", BOX, TOKEN)
    assert url == f"https://mail.acme.example/u/{make_token(BOX, TOKEN)}"
    assert unsubscribe_headers(url) == {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
