"""How a workspace's mail is doing: what each server sent per hour, what waits, what fails.

Read-only queries for the web UI's overview page. Hours are counted in the
database, not in Python, so a busy day costs one grouped query rather than a
row per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from postyard.db.models import Delivery
from postyard.delivery.policy import Status
from postyard.services.workspaces import Caller

WAITING = (Status.QUEUED, Status.DEFERRED, Status.SENDING)
TROUBLE = (Status.DEFERRED, Status.FAILED)


@dataclass(frozen=True)
class HourCount:
    """Messages one server (None: the default relay) sent in the hour starting at `hour`."""

    smtp_server_id: int | None
    hour: datetime
    count: int


@dataclass(frozen=True)
class Queue:
    depth: int
    """Messages queued, deferred or being sent."""
    oldest_created_at: datetime | None
    """When the longest-waiting of them was queued."""
    without_route: int
    """Deferred because the workspace has no server and there is no default relay (R7)."""


@dataclass(frozen=True)
class ServerTrouble:
    """A server some of whose recent deliveries were deferred or failed."""

    smtp_server_id: int
    sent: int
    deferred: int
    failed: int
    last_error: str | None
    last_error_at: datetime | None


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def sent_per_hour(
    session: Session, caller: Caller, since: datetime, until: datetime
) -> list[HourCount]:
    """Sent messages per server and hour, from the hour that contains `since` to `until`.

    The filter is a range on (workspace_id, sent_at), the columns of the index
    `ix_deliveries_workspace_sent` in that order, so a day's chart reads only that
    day's rows of the workspace however long its log grows.
    """
    hour = _hour_of(session, Delivery.sent_at)
    rows = session.execute(
        select(Delivery.smtp_server_id, hour, func.count())
        .where(
            Delivery.workspace_id == caller.workspace_id,
            Delivery.sent_at >= floor_hour(since),
            Delivery.sent_at < until,
            Delivery.status == Status.SENT,
        )
        .group_by(Delivery.smtp_server_id, hour)
    )
    return [HourCount(server_id, _as_datetime(start), count) for server_id, start, count in rows]


def queue(session: Session, caller: Caller) -> Queue:
    depth, oldest = session.execute(
        select(func.count(), func.min(Delivery.created_at)).where(
            Delivery.workspace_id == caller.workspace_id, Delivery.status.in_(WAITING)
        )
    ).one()
    without_route = session.scalar(
        select(func.count()).where(
            Delivery.workspace_id == caller.workspace_id,
            Delivery.status == Status.DEFERRED,
            Delivery.smtp_server_id.is_(None),
            Delivery.last_error.startswith("no_route"),
        )
    )
    return Queue(depth, oldest, without_route or 0)


def troubled_servers(session: Session, caller: Caller, since: datetime) -> list[ServerTrouble]:
    """Servers with deliveries deferred or failed since `since`, with their latest error.

    A deferred message that later went out counts as sent: what is listed is
    what is still wrong, not every hiccup of the last hour.
    """
    counts: dict[int, dict[str, int]] = {}
    for server_id, status, count in session.execute(
        select(Delivery.smtp_server_id, Delivery.status, func.count())
        .where(
            Delivery.workspace_id == caller.workspace_id,
            Delivery.smtp_server_id.is_not(None),
            Delivery.updated_at >= since,
            Delivery.status.in_([Status.SENT, *TROUBLE]),
        )
        .group_by(Delivery.smtp_server_id, Delivery.status)
    ):
        counts.setdefault(server_id, {})[status] = count
    troubles = []
    for server_id, by_status in sorted(counts.items()):
        if not any(by_status.get(status) for status in TROUBLE):
            continue
        last = session.execute(
            select(Delivery.last_error, Delivery.updated_at)
            .where(
                Delivery.workspace_id == caller.workspace_id,
                Delivery.smtp_server_id == server_id,
                Delivery.status.in_(TROUBLE),
                Delivery.updated_at >= since,
            )
            .order_by(Delivery.updated_at.desc(), Delivery.id.desc())
            .limit(1)
        ).one_or_none()
        troubles.append(
            ServerTrouble(
                server_id,
                sent=by_status.get(Status.SENT, 0),
                deferred=by_status.get(Status.DEFERRED, 0),
                failed=by_status.get(Status.FAILED, 0),
                last_error=last[0] if last else None,
                last_error_at=last[1] if last else None,
            )
        )
    return troubles


def _hour_of(session: Session, column: ColumnElement[datetime | None]) -> ColumnElement[object]:
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("hour", column)
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _as_datetime(value: datetime | str) -> datetime:
    """SQLite's strftime gives text, PostgreSQL's date_trunc a timestamp."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
