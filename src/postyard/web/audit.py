"""`/audit`: the workspace's configuration changes, newest first, each with what it changed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from postyard.api.context import Context
from postyard.db.models import AuditEvent
from postyard.services import audit
from postyard.services.audit import EventFilter, ObjectType
from postyard.web.common import PageRoute, render
from postyard.web.session import CurrentSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 50
# A CA bundle or a message body would fill the screen; the API has them whole.
SHOWN_CHARACTERS = 120
OBJECT_LABELS = {
    ObjectType.SMTP_SERVER.value: "SMTP server",
    ObjectType.CAMPAIGN.value: "Campaign",
    ObjectType.API_KEY.value: "API key",
    ObjectType.WORKSPACE.value: "Workspace",
}
_PAGES = {ObjectType.SMTP_SERVER.value: "/smtp/", ObjectType.CAMPAIGN.value: "/campaigns/"}


@dataclass(frozen=True)
class Change:
    field: str
    before: str
    after: str


@router.get("/audit")
def audit_page(request: Request, web: CurrentSession, context: Context) -> Response:
    object_type = request.query_params.get("object_type", "").strip()
    before = request.query_params.get("before", "").strip()
    errors: dict[str, str] = {}
    if object_type and object_type not in OBJECT_LABELS:
        errors["object_type"] = "Choose a kind of object from the list."
    if before and not (before.isascii() and before.isdigit() and int(before) < 2**31):
        errors["before"] = "Not a page of this log."
    rows: list[dict[str, Any]] = []
    next_cursor = None
    if not errors:
        where = EventFilter(object_type=ObjectType(object_type) if object_type else None)
        with context.database.session() as session:
            page = audit.list_events(
                session, web.caller.workspace_id, where, PAGE_SIZE, int(before) if before else None
            )
        rows = [_row(event) for event in page.events]
        next_cursor = page.next_cursor
    filters = {"object_type": object_type} if object_type else {}
    return render(
        request,
        "audit.html",
        session=web,
        nav="audit",
        object_type=object_type,
        object_choices=OBJECT_LABELS,
        errors=errors,
        rows=rows,
        filtered=bool(filters),
        older=f"/audit?{urlencode({**filters, 'before': next_cursor})}" if next_cursor else None,
        newest=f"/audit?{urlencode(filters)}" if before else None,
        status=422 if errors else 200,
    )


def _row(event: AuditEvent) -> dict[str, Any]:
    state = event.after or event.before or {}
    page = _PAGES.get(event.object_type)
    return {
        "id": event.id,
        "occurred_at": event.occurred_at,
        "actor": event.actor,
        "action": event.action.replace("_", " "),
        "object": f"{OBJECT_LABELS.get(event.object_type, event.object_type)} #{event.object_id}",
        "name": state.get("name"),
        "path": f"{page}{event.object_id}" if page and event.after is not None else None,
        "changes": [
            Change(
                name, _shown((event.before or {}).get(name)), _shown((event.after or {}).get(name))
            )
            for name in audit.changed_fields(event)
        ],
    }


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 1] + "…"
