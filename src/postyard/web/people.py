"""`/people`: find a person by id or email, and see what Postyard knows and did about them:
attributes, recent events, segment memberships and deliveries."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from postyard.api.context import Context
from postyard.routing import CampaignType
from postyard.services import deliveries, people, segments
from postyard.services.deliveries import DeliveryFilter
from postyard.services.errors import NotFound
from postyard.web.common import PageRoute, render, see_other
from postyard.web.session import CurrentSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 50
RECENT = 20
TYPE_LABELS = {t.value: t.label for t in CampaignType}


def person_path(person_id: str) -> str:
    return "/people/" + quote(person_id, safe="")


@router.get("/people")
def search_page(request: Request, web: CurrentSession, context: Context) -> Response:
    query = request.query_params.get("q", "").strip()
    error = None
    if len(query) > 320 or "\x00" in query:
        error = "Search for a person id or an email address of at most 320 characters."
        query_ok = False
    else:
        query_ok = True
    rows: list[Any] = []
    if query_ok:
        with context.database.session() as session:
            if query and "@" not in query:
                try:
                    person = people.get_person(session, web.caller, query)
                except NotFound:
                    error = f"No person has the id “{query}”."
                else:
                    return see_other(person_path(person.person_id))
            else:
                found = people.find_people(session, web.caller, query or None, PAGE_SIZE, None)
                rows = [
                    {
                        "path": person_path(p.person_id),
                        "person_id": p.person_id,
                        "email": p.email,
                        "unsubscribed": p.unsubscribed,
                        "created_at": p.created_at,
                    }
                    for p in found.people
                ]
                if query and not rows:
                    error = f"No person has the email address “{query}”."
    return render(
        request,
        "people.html",
        session=web,
        nav="people",
        status=422 if not query_ok else 200,
        query=query,
        error=error,
        rows=rows,
        searched=bool(query),
    )


@router.get("/people/{person_id:path}")
def person_page(
    person_id: str, request: Request, web: CurrentSession, context: Context
) -> Response:
    if not person_id or len(person_id) > 200:
        raise NotFound("No such person.")
    with context.database.session() as session:
        person = people.get_person(session, web.caller, person_id)
        memberships = [
            {"id": segment.id, "name": segment.name, "entered_at": entered_at}
            for segment, entered_at in segments.memberships_of(session, person)
        ]
        # No service lists a person's events yet: read the latest ones here.
        events = [
            {
                "name": event.name,
                "timestamp": event.timestamp,
                "data": json.dumps(event.data, ensure_ascii=False) if event.data else "",
            }
            for event in people.recent_events(session, person, RECENT)
        ]
        page = deliveries.list_deliveries(
            session, web.caller, DeliveryFilter(person_id=person.person_id), RECENT, None
        )
        sent = [
            {
                "id": d.id,
                "created_at": d.created_at,
                "type_label": TYPE_LABELS.get(d.campaign_type, d.campaign_type),
                "subject": d.subject,
                "status": d.status,
                "campaign_id": d.campaign_id,
            }
            for d in page.deliveries
        ]
        attributes = [
            (name, json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value)
            for name, value in sorted(person.attributes.items())
        ]
        facts = {
            "person_id": person.person_id,
            "email": person.email,
            "unsubscribed": person.unsubscribed,
            "created_at": person.created_at,
            "updated_at": person.updated_at,
        }
    return render(
        request,
        "person.html",
        session=web,
        nav="people",
        p=facts,
        attributes=attributes,
        events=events,
        memberships=memberships,
        deliveries=sent,
        more_deliveries=page.next_cursor is not None,
    )
