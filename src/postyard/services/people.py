"""People and their events: the data segments and campaigns run on.

A person is keyed by the workspace's own id for them (`person_id`). Identifying
merges attributes into what is stored; `email` and `unsubscribed` live in
columns of their own, since sending and suppression look them up. Emails are
stored in lower case, as on the suppression list, so that one address is one
value however it was typed. Every change re-evaluates the person's segment
memberships and starts the campaigns that the change triggers.

Each operation checks everything it can refuse before it writes anything, so
that a batch can run many operations in one transaction and a refused one
leaves nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, make_transient_to_detached

from postyard.db.models import Person, PersonEvent, SegmentMember
from postyard.delivery import outbox
from postyard.delivery.policy import Status
from postyard.services import segments, triggers
from postyard.services.errors import InvalidInput, NotFound, ServiceError
from postyard.services.runtime import Runtime
from postyard.services.unsubscribe import UNSUBSCRIBED as UNSUBSCRIBED_BECAUSE
from postyard.services.workspaces import Caller

MAX_ATTRIBUTES = 300
MAX_ATTRIBUTES_BYTES = 100_000
# Kept in columns, not in `attributes`: sending reads them for every message.
EMAIL, UNSUBSCRIBED = "email", "unsubscribed"
CANCELLED_BECAUSE = "person deleted"


@dataclass(frozen=True)
class Identified:
    person: Person
    created: bool


@dataclass(frozen=True)
class PeoplePage:
    people: list[Person]
    next_cursor: int | None


@dataclass(frozen=True)
class Identify:
    """Merge `attributes` into the person's; a `None` value removes that attribute."""

    person_id: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class Track:
    """Record an event; `timestamp` None means now."""

    person_id: str
    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None


@dataclass(frozen=True)
class Forget:
    person_id: str


Operation = Identify | Track | Forget


def get_person(session: Session, caller: Caller, person_id: str) -> Person:
    person = session.scalar(
        select(Person).where(
            Person.workspace_id == caller.workspace_id, Person.person_id == person_id
        )
    )
    if person is None:
        raise NotFound(f"No person with id '{person_id}' in this workspace.")
    return person


def find_people(
    session: Session, caller: Caller, email: str | None, limit: int, before: int | None
) -> PeoplePage:
    """Newest first, optionally only those with `email`; `before` is the previous page's cursor."""
    query = select(Person).where(Person.workspace_id == caller.workspace_id)
    if email is not None:
        query = query.where(Person.email == email.lower())
    if before is not None:
        query = query.where(Person.id < before)
    rows = list(session.scalars(query.order_by(Person.id.desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return PeoplePage(rows[:limit], next_cursor)


def identify(session: Session, runtime: Runtime, caller: Caller, operation: Identify) -> Identified:
    """Create or update a person, then start what entering new segments triggers."""
    return _Ingest(session, runtime, caller, [operation.person_id]).identify(operation)


def track(session: Session, runtime: Runtime, caller: Caller, operation: Track) -> PersonEvent:
    """Record an event, creating an unknown person (without an email, so nothing can be sent
    to them yet); then start what it triggers, through segments and directly."""
    return _Ingest(session, runtime, caller, [operation.person_id]).track(operation)


def forget(session: Session, runtime: Runtime, caller: Caller, operation: Forget) -> None:
    """Delete a person with their events and memberships, and cancel their waiting mail."""
    _Ingest(session, runtime, caller, [operation.person_id]).forget(operation)


def apply_batch(
    session: Session, runtime: Runtime, caller: Caller, operations: Sequence[Operation]
) -> list[ServiceError | None]:
    """Apply operations in order, in the caller's transaction; one's refusal spares the others.

    Returns, for each operation, the error that refused it or None.
    """
    ingest = _Ingest(session, runtime, caller, [operation.person_id for operation in operations])
    results: list[ServiceError | None] = []
    for operation in operations:
        try:
            match operation:
                case Identify():
                    ingest.identify(operation)
                case Track():
                    ingest.track(operation)
                case Forget():
                    ingest.forget(operation)
        except ServiceError as error:
            results.append(error)
        else:
            results.append(None)
    return results


class _Ingest:
    """Operations on some people of one workspace, within one transaction.

    Opening it locks and loads every person the operations name, in one query,
    and reads what their segment memberships depend on; each operation then
    works on them in memory and writes only what it changes. This is what makes
    a batch of a thousand operations cost a few statements per operation
    rather than a dozen.
    """

    def __init__(
        self, session: Session, runtime: Runtime, caller: Caller, person_ids: Sequence[str]
    ) -> None:
        self.session = session
        self.runtime = runtime
        self.workspace_id = caller.workspace_id
        self.now = runtime.clock()
        found = _lock(session, caller.workspace_id, set(person_ids))
        self.people: dict[str, Person | None] = {person.person_id: person for person in found}
        self.memberships = segments.Memberships.of_workspace(session, self.workspace_id, found)

    def identify(self, operation: Identify) -> Identified:
        person = self.people.get(operation.person_id)
        changes = operation.attributes
        attributes = {
            key: value
            for key, value in {**(person.attributes if person else {}), **changes}.items()
            if value is not None and key not in {EMAIL, UNSUBSCRIBED}
        }
        _check_limits(attributes)
        email = changes.get(EMAIL, person.email if person else None)
        unsubscribed = changes.get(UNSUBSCRIBED, person.unsubscribed if person else False)
        fields = {
            "attributes": attributes,
            "email": email.lower() if email else None,
            "unsubscribed": bool(unsubscribed),
        }
        created = person is None
        if person is None:
            person, inserted = self._create(operation.person_id, fields)
            if not inserted:  # a concurrent request created them: merge into what it stored
                return self.identify(operation)
        else:
            if fields["unsubscribed"] and not person.unsubscribed:
                outbox.withdraw_waiting(
                    self.session,
                    self.workspace_id,
                    person.person_id,
                    Status.SUPPRESSED,
                    UNSUBSCRIBED_BECAUSE,
                    self.now,
                    campaign_mail_only=True,
                )
            for name, value in fields.items():
                setattr(person, name, value)
            person.updated_at = self.now
        self._start_segment_campaigns(person)
        return Identified(person, created)

    def track(self, operation: Track) -> PersonEvent:
        person = self.people.get(operation.person_id) or self._create(operation.person_id, {})[0]
        event = PersonEvent(
            workspace_id=self.workspace_id,
            person_pk=person.id,
            name=operation.name,
            data=dict(operation.data),
            timestamp=operation.timestamp or self.now,
        )
        self.session.add(event)
        self.session.flush()
        self.memberships.record(event)
        self._start_segment_campaigns(person)
        triggers.on_event(self.session, self.runtime, person, event)
        return event

    def forget(self, operation: Forget) -> None:
        person = self.people.get(operation.person_id)
        if person is None:
            raise NotFound(f"No person with id '{operation.person_id}' in this workspace.")
        outbox.withdraw_waiting(
            self.session,
            self.workspace_id,
            person.person_id,
            Status.CANCELLED,
            CANCELLED_BECAUSE,
            self.now,
        )
        self.session.execute(delete(SegmentMember).where(SegmentMember.person_pk == person.id))
        self.session.execute(delete(PersonEvent).where(PersonEvent.person_pk == person.id))
        self.session.delete(person)
        self.session.flush()
        self.people[operation.person_id] = None
        self.memberships.forget(person)

    def _start_segment_campaigns(self, person: Person) -> None:
        entered = self.memberships.refresh([person], self.now).entered.get(person.id)
        if entered:
            triggers.on_segment_entries(self.session, self.runtime, person, entered)

    def _create(self, person_id: str, fields: Mapping[str, Any]) -> tuple[Person, bool]:
        """Insert a new person with `fields`; if a concurrent request inserted them first, lock
        and load theirs instead. Says which it was.

        A Core insert returning only the id, with the object then attached as if
        loaded, takes half the time of an ORM insert returning the entity: it
        counts when a batch brings in a thousand new people.
        """
        dialect = self.session.bind.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        table = Person.__table__
        values = {
            "workspace_id": self.workspace_id,
            "person_id": person_id,
            "email": None,
            "attributes": {},
            "unsubscribed": False,
            "created_at": self.now,
            "updated_at": self.now,
            **fields,
        }
        new_id = self.session.execute(
            insert(table)
            .values(values)
            .on_conflict_do_nothing(index_elements=[table.c.workspace_id, table.c.person_id])
            .returning(table.c.id)
        ).scalar_one_or_none()
        if new_id is not None:
            person = Person(id=new_id, **values)
            make_transient_to_detached(person)
            self.session.add(person)
            self.people[person_id] = person
            self.memberships.add(person)
            return person, True
        [theirs] = _lock(self.session, self.workspace_id, {person_id})
        self.people[person_id] = theirs
        live = [known for known in self.people.values() if known is not None]
        self.memberships = segments.Memberships.of_workspace(self.session, self.workspace_id, live)
        return theirs, False


def _lock(session: Session, workspace_id: int, person_ids: Collection[str]) -> list[Person]:
    """Load people for a change, holding their rows so that concurrent merges cannot lose each
    other's attributes.

    PostgreSQL locks the rows in id order, so that two batches naming the same
    people cannot deadlock. SQLite has no row locks: a no-op update takes the
    database's write lock before anything is read, and RETURNING loads the rows.
    """
    where = (Person.workspace_id == workspace_id, Person.person_id.in_(person_ids))
    if session.bind.dialect.name == "postgresql":
        query = select(Person).where(*where).order_by(Person.id).with_for_update()
        return list(session.scalars(query))
    return list(
        session.scalars(
            update(Person).where(*where).values(person_id=Person.person_id).returning(Person),
            execution_options={"synchronize_session": False},
        )
    )


def _check_limits(attributes: Mapping[str, Any]) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidInput(
            f"A person may have at most {MAX_ATTRIBUTES} attributes; "
            f"this change would leave {len(attributes)}.",
            code="attribute_limit",
        )
    size = len(json.dumps(attributes, ensure_ascii=False).encode())
    if size > MAX_ATTRIBUTES_BYTES:
        raise InvalidInput(
            f"A person's attributes may take at most {MAX_ATTRIBUTES_BYTES} bytes as JSON; "
            f"this change would make them {size}.",
            code="attribute_limit",
        )


def recent_events(session: Session, person: Person, limit: int) -> list[PersonEvent]:
    """The person's latest events, newest first."""
    return list(
        session.scalars(
            select(PersonEvent)
            .where(PersonEvent.person_pk == person.id)
            .order_by(PersonEvent.timestamp.desc(), PersonEvent.id.desc())
            .limit(limit)
        )
    )
