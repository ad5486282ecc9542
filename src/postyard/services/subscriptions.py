"""Following an unsubscribe link: whom it names, and unsubscribing them.

Apart from `services.unsubscribe` (the links themselves) because the campaigns
import that to put links in mail, while this imports segments and triggers,
which import the campaigns: one module would import itself in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from postyard.db.models import Person, Workspace
from postyard.delivery import outbox
from postyard.delivery.policy import Status
from postyard.services import segments, triggers
from postyard.services.runtime import Runtime
from postyard.services.unsubscribe import UNSUBSCRIBED, UnsubscribeToken


@dataclass(frozen=True)
class Subscriber:
    """What the unsubscribe page may show about the person a link names."""

    email: str | None
    sender: str
    unsubscribed: bool


def look_up(session: Session, token: UnsubscribeToken) -> Subscriber | None:
    """The person the token names, or None when they are gone (deleted, or never there)."""
    person = _person(session, token, lock=False)
    return None if person is None else _subscriber(session, person)


def unsubscribe(session: Session, runtime: Runtime, token: UnsubscribeToken) -> Subscriber | None:
    """Unsubscribe the person the token names; doing it again changes nothing.

    The effect is that of `PUT /people` with `unsubscribed: true` (segments see the
    change at once), and more: campaign mail already queued for the person is
    recorded as suppressed rather than sent after they asked for no more.
    """
    person = _person(session, token, lock=True)
    if person is None:
        return None
    now = runtime.clock()
    outbox.withdraw_waiting(
        session,
        person.workspace_id,
        person.person_id,
        Status.SUPPRESSED,
        UNSUBSCRIBED,
        now,
        campaign_mail_only=True,
    )
    if not person.unsubscribed:
        person.unsubscribed = True
        person.updated_at = now
        session.flush()
        entered = segments.refresh_memberships(session, person, now)
        if entered:
            triggers.on_segment_entries(session, runtime, person, entered)
    return _subscriber(session, person)


def _person(session: Session, token: UnsubscribeToken, *, lock: bool) -> Person | None:
    """The person, only if they belong to the workspace the token was signed for."""
    query = select(Person).where(
        Person.id == token.person_pk, Person.workspace_id == token.workspace_id
    )
    return session.scalars(query.with_for_update() if lock else query).one_or_none()


def _subscriber(session: Session, person: Person) -> Subscriber:
    sender = session.scalars(select(Workspace.name).where(Workspace.id == person.workspace_id))
    return Subscriber(person.email, sender.one(), person.unsubscribed)
