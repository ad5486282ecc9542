"""Time as Postyard stores it: naive datetimes in UTC, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def isoformat(moment: datetime | None) -> str | None:
    """Render a stored moment for the API, marked as UTC."""
    return None if moment is None else moment.replace(tzinfo=UTC).isoformat()
