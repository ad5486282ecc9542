"""Turning a claimed delivery into the bytes that go over the wire."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from postyard.delivery.outbox import Claimed


def build_message(delivery: Claimed, now: datetime) -> bytes:
    """An RFC 5322 message; the email package folds long lines and encodes non-ASCII words.

    Header values with CR or LF are refused by the policy (ValueError), so a
    value that slipped past validation still cannot add a header of its own.
    """
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
