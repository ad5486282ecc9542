"""`/v1/audit`: every configuration change of the workspace, newest first.

Read it beside a delivery's `route_reason` to learn why mail took the route it
did: the role changes are here, with their time and who made them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator

from postyard.api.context import Context, CurrentCaller
from postyard.api.fields import Name, RowId, UtcDateTime
from postyard.clock import isoformat
from postyard.db.models import AuditEvent
from postyard.services import audit
from postyard.services.audit import Action, EventFilter, ObjectType
from postyard.services.errors import InvalidInput

router = APIRouter(prefix="/v1/audit", tags=["Audit trail"])


def _iso_8601(value: object) -> object:
    """Only ISO 8601 text: Pydantic would also read `0.5` as Unix seconds, which the
    document, declaring a date-time, does not promise."""
    if not isinstance(value, str):
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a date and time in ISO 8601, like 2026-11-29T14:00:00Z") from None


Moment = Annotated[UtcDateTime, BeforeValidator(_iso_8601)]


class AuditEventOut(BaseModel):
    id: int
    occurred_at: str | None
    actor: str
    """The name of the API key that made the change, or `cli` for the command line."""
    api_key_id: int | None
    action: Action
    object_type: ObjectType
    object_id: str | None
    before: dict[str, Any] | None
    """The object's configuration before the change; None for a creation. Secrets: `***`."""
    after: dict[str, Any] | None
    """After the change; None for a deletion."""
    changed: list[str]
    """The fields whose value differs between before and after."""

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventOut:
        return cls(
            id=event.id,
            occurred_at=isoformat(event.occurred_at),
            actor=event.actor,
            api_key_id=event.api_key_id,
            action=Action(event.action),
            object_type=ObjectType(event.object_type),
            object_id=event.object_id,
            before=event.before,
            after=event.after,
            changed=audit.changed_fields(event),
        )


class AuditPage(BaseModel):
    data: list[AuditEventOut]
    next_cursor: int | None


@router.get("")
def list_events(
    caller: CurrentCaller,
    context: Context,
    object_type: ObjectType | None = None,
    object_id: Name | None = None,
    action: Action | None = None,
    since: Annotated[Moment | None, Query(description="From this time on (inclusive).")] = None,
    until: Annotated[Moment | None, Query(description="Before this time (exclusive).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: RowId | None = None,
) -> AuditPage:
    """The changes, newest first; pass `next_cursor` as `before` for the next page."""
    if since is not None and until is not None and until < since:
        raise InvalidInput("until: must not be earlier than since.")
    where = EventFilter(object_type, object_id, action, since, until)
    with context.database.session() as session:
        page = audit.list_events(session, caller.workspace_id, where, limit, before)
        return AuditPage(
            data=[AuditEventOut.of(event) for event in page.events], next_cursor=page.next_cursor
        )
