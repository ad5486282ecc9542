"""The audit trail: who changed which piece of configuration, when, from what to what.

Routing is decided at send time (R6), so "why did this mail go through that
server?" is answered by the configuration as it was then: each change is kept
with the values before and after it. Secrets never enter the trail: this module
is the one place that knows which columns hold them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from postyard.clock import isoformat
from postyard.db.models import AuditEvent

CLI_ACTOR = "cli"
MASK = "***"
MASK_REPLACED = "*** (new)"
"""A secret set by this very change: its mask alone would not show that it changed."""

Snapshot = dict[str, Any]


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    ROLE_CHANGE = "role_change"
    """An update that changed a server's delivery role: the change that moves traffic."""
    REORDER = "reorder"
    """A server moved because another was placed, moved or deleted before it."""
    DELETE = "delete"
    STATE_CHANGE = "state_change"
    """An update that changed a campaign's state (activated, paused, back to draft)."""
    SEND = "send"
    TRIGGER = "trigger"
    REVOKE = "revoke"


class ObjectType(StrEnum):
    SMTP_SERVER = "smtp_server"
    CAMPAIGN = "campaign"
    API_KEY = "api_key"
    WORKSPACE = "workspace"
    """Its settings: `failover` changes where mail goes when a server is down."""


@dataclass(frozen=True)
class Actor:
    """Who makes a change and in which workspace: an API key (by name and id), or the CLI."""

    workspace_id: int
    name: str
    api_key_id: int | None

    @classmethod
    def cli(cls, workspace_id: int) -> Actor:
        return cls(workspace_id, CLI_ACTOR, None)


# Shown as `***` when set: the stored value, even encrypted, is nobody's business.
_SECRET_COLUMNS = {"password_encrypted": "password"}
# Not configuration: hashes, and what the system itself keeps up to date as it works.
_UNRECORDED_COLUMNS = frozenset(
    {
        "id",
        "workspace_id",
        "key_hash",
        "created_at",
        "updated_at",
        "last_used_at",
        "unreachable_since",
        "unreachable_error",
        "lease_until",
        "fanout_cursor",
    }
)


def snapshot(row: object, replaced: Collection[str] = ()) -> Snapshot:
    """The row's configuration as JSON-safe values, secrets masked, for `before`/`after`.

    `replaced` names the secrets (as recorded, e.g. `password`) this change has just set.
    """
    values: Snapshot = {}
    for column in inspect(row).mapper.column_attrs:
        name = column.key
        if name in _UNRECORDED_COLUMNS:
            continue
        value = getattr(row, name)
        if name in _SECRET_COLUMNS:
            shown = _SECRET_COLUMNS[name]
            mask = MASK_REPLACED if shown in replaced else MASK
            values[shown] = mask if value is not None else None
        else:
            values[name] = _json_safe(value)
    return values


def _json_safe(value: Any) -> Any:
    """A deep copy in JSON's types, so a later change to the row cannot alter the record."""
    if isinstance(value, datetime):
        return isoformat(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def record(
    session: Session,
    actor: Actor,
    action: Action,
    object_type: ObjectType,
    object_id: int | str,
    before: Snapshot | None,
    after: Snapshot | None,
) -> AuditEvent | None:
    """Add the change to the trail in the caller's transaction: kept if and only if the change is.

    A change that changed nothing (a PATCH with the current values, revoking a revoked
    key) is not an event, and is not recorded.
    """
    if before is not None and before == after:
        return None
    event = AuditEvent(
        workspace_id=actor.workspace_id,
        actor=actor.name,
        api_key_id=actor.api_key_id,
        action=action.value,
        object_type=object_type.value,
        object_id=str(object_id),
        before=before,
        after=after,
    )
    session.add(event)
    return event


def changed_fields(event: AuditEvent) -> list[str]:
    """The fields whose value differs between before and after, in the order recorded."""
    before = event.before or {}
    after = event.after or {}
    names = list(dict.fromkeys([*before, *after]))
    return [name for name in names if before.get(name) != after.get(name)]


@dataclass(frozen=True)
class EventFilter:
    object_type: ObjectType | None = None
    object_id: str | None = None
    action: Action | None = None
    since: datetime | None = None
    """Inclusive, naive UTC like every stored time."""
    until: datetime | None = None
    """Exclusive."""


@dataclass(frozen=True)
class Page:
    events: list[AuditEvent]
    next_cursor: int | None


def list_events(
    session: Session, workspace_id: int, where: EventFilter, limit: int, before: int | None
) -> Page:
    """Newest first; `before` is the cursor the previous page returned."""
    query = select(AuditEvent).where(AuditEvent.workspace_id == workspace_id)
    for column, value in (
        (AuditEvent.object_type, where.object_type),
        (AuditEvent.object_id, where.object_id),
        (AuditEvent.action, where.action),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(AuditEvent.occurred_at >= where.since)
    if where.until is not None:
        query = query.where(AuditEvent.occurred_at < where.until)
    if before is not None:
        query = query.where(AuditEvent.id < before)
    rows = list(session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return Page(rows[:limit], next_cursor)
