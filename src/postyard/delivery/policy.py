"""What an SMTP outcome means for a delivery, and when to try again (DESIGN §5). No I/O."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"


# States a worker may claim a delivery in, once its next attempt is due.
CLAIMABLE = (Status.QUEUED, Status.DEFERRED)

_ENHANCED_CODE = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Reply:
    """An SMTP reply as the server sent it, or a stand-in for a failure to talk at all."""

    code: int | None
    text: str

    @property
    def enhanced(self) -> tuple[int, int, int] | None:
        match = _ENHANCED_CODE.match(self.text)
        return None if match is None else (int(match[1]), int(match[2]), int(match[3]))

    def __str__(self) -> str:
        return self.text if self.code is None else f"{self.code} {self.text}"


# 530 (RFC 4954/3207: authentication or STARTTLS required) says the session was not set up
# as the server wants, nothing about the message: a server configured without credentials
# must not fail every message queued for it, so it is retried like a connection failure.
SESSION_REPLY_CODES = frozenset({530})


def is_permanent(reply: Reply) -> bool:
    """5xx fails the message; 4xx, timeouts and lost connections (no code) are retried."""
    return (
        reply.code is not None and 500 <= reply.code < 600 and reply.code not in SESSION_REPLY_CODES
    )


def is_hard_bounce(reply: Reply) -> bool:
    """5.1.x says the address itself is bad: it joins the suppression list."""
    enhanced = reply.enhanced
    return is_permanent(reply) and enhanced is not None and enhanced[:2] == (5, 1)


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    max_seconds: float

    def delay(self, attempts: int, rng: random.Random | None = None) -> timedelta:
        """Exponential backoff with jitter, so a recovering server is not hit in lockstep."""
        # The exponent is bounded so that a long-lived message retried thousands of times
        # (a small max_seconds) cannot overflow float conversion; 2**1023 is past any cap.
        doublings = min(max(attempts - 1, 0), 1023)
        exponential = min(self.base_seconds * 2**doublings, self.max_seconds)
        jitter = (rng or random).uniform(0.5, 1.0)
        return timedelta(seconds=exponential * jitter)

    def next_attempt(self, now: datetime, attempts: int, expires_at: datetime) -> datetime | None:
        """When to try again, or None once the message's lifetime would be exceeded."""
        due = now + self.delay(attempts)
        return None if due > expires_at else due


@dataclass(frozen=True)
class Verdict:
    status: Status
    next_attempt_at: datetime
    error: str


def after_failure(
    reply: Reply, now: datetime, attempts: int, expires_at: datetime, policy: RetryPolicy
) -> Verdict:
    """A permanent reply fails the message; anything else defers it within its lifetime."""
    if is_permanent(reply):
        return Verdict(Status.FAILED, now, str(reply))
    due = policy.next_attempt(now, attempts, expires_at)
    if due is None:
        return Verdict(
            Status.FAILED,
            now,
            f"lifetime exceeded after {attempts} attempt{'s' if attempts != 1 else ''}; "
            f"last error: {reply}",
        )
    return Verdict(Status.DEFERRED, due, str(reply))
