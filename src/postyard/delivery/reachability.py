"""Whether a configured SMTP server can be reached, as the workers last found it.

A worker that cannot get a session from a server (refused, timed out, 421) marks it
unreachable, with the time and the error; one that gets through clears the mark. Failover
(a workspace setting) routes a specific server's campaign type around a marked server, and
`GET /v1/routing` shows it as down. The worker writes only when the state it read at the
start of a batch changes, so a healthy server costs no write at all.

While failover routes around a server, no mail would go to it and nothing would notice it is
back: so every `trial_seconds` one message is let through to it as a trial (`Trials`).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from datetime import datetime

import aiosmtplib
from sqlalchemy import update
from sqlalchemy.orm import Session

from postyard.db.models import SmtpServer
from postyard.delivery.pool import ConnectionFailed

UNREACHABLE_CODES = frozenset({421})
"""421: the service is not available and the server closes the channel (RFC 5321 §4.2.3)."""

MAX_TRIAL_SECONDS = 30.0
"""The longest a marked server goes untried when failover keeps mail away from it."""


def unreachable_reason(error: BaseException) -> str | None:
    """Why `error` says that the server cannot be reached, or None when it says something else.

    A session that could not be set up at all (no code: refused, timed out, TLS failed) or a
    421 mean the server is not there for us. An AUTH refusal or a 5xx about the message come
    from a server that is there and answering: failing over would hide a problem of its own.
    """
    if isinstance(error, ConnectionFailed):
        return str(error) if error.code is None or error.code in UNREACHABLE_CODES else None
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused) and error.recipients:
        error = error.recipients[0]
    if isinstance(error, aiosmtplib.SMTPResponseException) and error.code in UNREACHABLE_CODES:
        return f"{error.code} {error.message}"
    return None


def mark_unreachable(session: Session, server_id: int, since: datetime, error: str) -> None:
    """Record the outage, unless another worker already has (its `since` is the earlier one).

    `updated_at` is kept as it is: it names the server's connection settings (the pool key),
    which an outage does not change.
    """
    session.execute(
        update(SmtpServer)
        .where(SmtpServer.id == server_id, SmtpServer.unreachable_since.is_(None))
        .values(
            unreachable_since=since,
            unreachable_error=error[:2000],
            updated_at=SmtpServer.updated_at,
        )
        .execution_options(synchronize_session=False)
    )


def mark_reachable(session: Session, server_id: int) -> None:
    session.execute(
        update(SmtpServer)
        .where(SmtpServer.id == server_id, SmtpServer.unreachable_since.is_not(None))
        .values(unreachable_since=None, unreachable_error=None, updated_at=SmtpServer.updated_at)
        .execution_options(synchronize_session=False)
    )


class Trials:
    """When each marked server may next take a trial message; one worker's own view."""

    def __init__(self, trial_seconds: float) -> None:
        self.trial_seconds = trial_seconds
        self._next: dict[int, float] = {}

    def due(self, unreachable: Collection[int]) -> set[int]:
        """The marked servers whose trial is due now; a server first seen marked waits
        `trial_seconds`, and each one tried is not tried again for as long."""
        now = time.monotonic()
        for server_id in set(self._next) - set(unreachable):
            del self._next[server_id]
        for server_id in unreachable:
            self._next.setdefault(server_id, now + self.trial_seconds)
        due = {server_id for server_id in unreachable if self._next[server_id] <= now}
        for server_id in due:
            self._next[server_id] = now + self.trial_seconds
        return due
