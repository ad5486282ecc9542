"""From a campaign and the people it reaches to outbox rows, one batch at a time.

Every campaign message goes through `Composer.letter`: the person's variables,
their signed unsubscribe link (in the body's `{{ unsubscribe_url }}` and in the
RFC 8058 headers), the rendered fields, and the reason when it must not go out
(unsubscribed: `suppressed`; the template failed for them: `failed`). Audiences
are read by keyset on the person id, `after` a cursor, so that a send of any
size holds one batch in memory and can resume where it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    String,
    and_,
    bindparam,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from postyard import templating
from postyard.clock import isoformat
from postyard.db.models import Campaign, Delivery, Person, PersonEvent, SegmentMember
from postyard.delivery import outbox
from postyard.delivery.outbox import Letter
from postyard.delivery.policy import Status
from postyard.services.runtime import Runtime
from postyard.services.unsubscribe import (
    UNSUBSCRIBED,
    UnsubscribeToken,
    unsubscribe_headers,
    unsubscribe_url,
)
from postyard.templating import Memo, MessageTemplate, RenderError

BATCH_SIZE = 1000
RENDER_ERROR = "render_error"
NO_EMAIL = "the person has no email address"
# A broadcast trigger names its people with at most one of these lists (or a condition tree).
LIST_FORMS = ("ids", "emails", "per_user_data")
# Deliveries that do not count as "already sent" for once-only campaigns: the person never
# had the message (unsubscribed then, or deleted before it went).
NOT_SENT = (Status.SUPPRESSED, Status.CANCELLED)
# What a message needs of a person. An audience is read as rows of these columns: a third of
# the cost of loading ORM objects, which a send only reads.
RECIPIENT_COLUMNS = (
    Person.id,
    Person.person_id,
    Person.email,
    Person.attributes,
    Person.unsubscribed,
)


class Recipient(Protocol):
    """A person as a message sees them: a `Person`, or a row of RECIPIENT_COLUMNS."""

    @property
    def id(self) -> int: ...
    @property
    def person_id(self) -> str: ...
    @property
    def email(self) -> str | None: ...
    @property
    def attributes(self) -> dict[str, Any]: ...
    @property
    def unsubscribed(self) -> bool: ...


@dataclass(frozen=True)
class Composer:
    """Renders one campaign's message for each person it goes to. Its `memo` lets the
    people of a send share what their messages have in common (see `templating`)."""

    campaign_id: int
    workspace_id: int
    campaign_type: str
    template: MessageTemplate
    runtime: Runtime
    memo: Memo = field(default_factory=Memo, compare=False, repr=False)

    @classmethod
    def of(cls, campaign: Campaign, runtime: Runtime) -> Composer:
        version = (campaign.id, campaign.updated_at)
        template = templating.templates.get(*version, campaign.message)
        memo = templating.templates.memo(*version)
        return cls(campaign.id, campaign.workspace_id, campaign.type, template, runtime, memo)

    def letter(
        self, person: Recipient, variables: Mapping[str, Any] | None = None
    ) -> Letter | None:
        """The letter for `person`, or None when they have no address to send it to."""
        if not person.email:
            return None
        url = unsubscribe_url(
            self.runtime.settings.public_url,
            self.runtime.box,
            UnsubscribeToken(self.workspace_id, person.id, self.campaign_id),
        )
        context = {**(variables or {}), "customer": customer(person), "unsubscribe_url": url}
        envelope = {
            "campaign_type": self.campaign_type,
            "to_address": person.email,
            "headers": unsubscribe_headers(url),
            "campaign_id": self.campaign_id,
            "person_id": person.person_id,
        }
        try:
            rendered = self.template.render(context, self.memo)
        except RenderError as error:
            if person.unsubscribed:
                return Letter(
                    **envelope, from_address="", subject="", suppressed_because=UNSUBSCRIBED
                )
            return Letter(
                **envelope, from_address="", subject="", failed_because=f"{RENDER_ERROR}: {error}"
            )
        return Letter(
            **envelope,
            from_address=rendered.from_address,
            reply_to=rendered.reply_to,
            subject=rendered.subject,
            text_body=rendered.text,
            html_body=rendered.html,
            suppressed_because=UNSUBSCRIBED if person.unsubscribed else None,
        )


def customer(person: Recipient) -> dict[str, Any]:
    """`customer.*`: the person's attributes, with their id and email address."""
    return {**person.attributes, "id": person.person_id, "email": person.email}


def event_variables(event: PersonEvent) -> dict[str, Any]:
    """`event.*`: the event's data, with its `name`, `timestamp` and the data again as `data`
    (the event's own name and time win over data keys of the same name)."""
    return {
        **event.data,
        "name": event.name,
        "timestamp": isoformat(event.timestamp),
        "data": event.data,
    }


@dataclass
class RecipientBatch:
    """One batch of a broadcast trigger: its letters, per-recipient errors, and where the
    next batch starts (a position in the trigger's list, or a person id)."""

    letters: list[Letter | None] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    cursor: int = 0


@dataclass
class Tally:
    """What one batch (or a whole send) did, by outcome."""

    recipients: int = 0
    queued: int = 0
    suppressed: int = 0
    failed: int = 0
    skipped: int = 0

    def add(self, other: Tally) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def enqueue(
    session: Session, runtime: Runtime, workspace_id: int, letters: Sequence[Letter | None]
) -> Tally:
    """Queue the letters (None: a person without an address, skipped) and count outcomes."""
    batch = [letter for letter in letters if letter is not None]
    counts = outbox.enqueue_counted(session, workspace_id, batch, runtime.clock(), runtime.lifetime)
    skipped = sum(1 for letter in letters if letter is None)
    queued, suppressed = counts.pop(Status.QUEUED, 0), counts.pop(Status.SUPPRESSED, 0)
    return Tally(
        recipients=len(batch) + skipped,
        queued=queued,
        suppressed=suppressed,
        failed=sum(counts.values()),
        skipped=skipped,
    )


def people_after(
    session: Session, workspace_id: int, audience: Mapping[str, Any], after: int, limit: int
) -> list[Recipient]:
    """The next `limit` people of an audience (`{"segment_id"}` or `{"all": true}`)."""
    query = select(*RECIPIENT_COLUMNS).where(Person.workspace_id == workspace_id, Person.id > after)
    if "segment_id" in audience:
        query = query.join(SegmentMember, SegmentMember.person_pk == Person.id).where(
            SegmentMember.segment_id == audience["segment_id"]
        )
    return list(session.execute(query.order_by(Person.id).limit(limit)))


def newsletter_letters(
    session: Session, composer: Composer, people: Sequence[Recipient]
) -> list[Letter | None]:
    """One letter per address for a batch of a newsletter's audience.

    An address that this newsletter was already queued to (in an earlier batch)
    is skipped, as is a second person with the same address in this batch. An
    unsubscribed person gets a `suppressed` row of their own, and does not claim
    the address for the others who share it.
    """
    addresses = {person.email for person in people if person.email}
    taken = _addresses_taken(session, composer.campaign_id, addresses)
    letters: list[Letter | None] = []
    for person in people:
        if not person.email:
            letters.append(None)
            continue
        if person.unsubscribed:
            letters.append(composer.letter(person))
            continue
        key = person.email.lower()
        if key in taken:
            continue
        taken.add(key)
        letters.append(composer.letter(person))
    return letters


def _addresses_taken(session: Session, campaign_id: int, addresses: set[str]) -> set[str]:
    """Which of these addresses (lower-cased) the newsletter has already claimed."""
    candidates = sorted(addresses | {address.lower() for address in addresses})
    taken = _found_among(session, Delivery.to_address, candidates, _claims(campaign_id))
    return {address.lower() for address in taken}


def _claims(campaign_id: int) -> ColumnElement[bool]:
    """A row of this campaign claims its address unless it went to an unsubscribed person."""
    return and_(
        Delivery.campaign_id == campaign_id,
        or_(Delivery.last_error.is_(None), Delivery.last_error != UNSUBSCRIBED),
    )


def already_sent(session: Session, campaign_id: int, person_ids: Sequence[str]) -> set[str]:
    """Which of these people this campaign has already written to."""
    return _found_among(
        session,
        Delivery.person_id,
        person_ids,
        and_(Delivery.campaign_id == campaign_id, Delivery.status.not_in(NOT_SENT)),
    )


def _found_among(
    session: Session,
    column: InstrumentedAttribute[str | None],
    values: Sequence[str],
    condition: ColumnElement[bool],
) -> set[str]:
    """Which of `values` stand in `column` of some delivery that meets `condition`.

    PostgreSQL looks each value up on its own, one probe of the campaign's index per value:
    given the whole list at once, its planner, whose statistics never count the rows of a
    send in progress, read every row the campaign had so far for each batch, and a send
    became quadratic. A LATERAL subquery with a LIMIT cannot be turned into that scan.
    """
    if not values:
        return set()
    if session.get_bind().dialect.name != "postgresql":
        found = session.scalars(select(column).where(condition, column.in_(values)))
        return {value for value in found if value is not None}
    listed = bindparam("values", list(values), type_=ARRAY(String))
    batch = func.unnest(listed).table_valued("value").render_derived()
    probe = select(Delivery.id).where(condition, column == batch.c.value).limit(1).lateral()
    return set(session.scalars(select(batch.c.value).join(probe, true())))


def people_by_id(
    session: Session, workspace_id: int, person_ids: Sequence[str]
) -> dict[str, Person]:
    if not person_ids:
        return {}
    rows = session.scalars(
        select(Person).where(Person.workspace_id == workspace_id, Person.person_id.in_(person_ids))
    )
    return {person.person_id: person for person in rows}


def people_by_email(
    session: Session, workspace_id: int, emails: Sequence[str]
) -> dict[str, Person]:
    """By lower-cased address, the first person (by id) with each: an address gets one letter."""
    if not emails:
        return {}
    rows = session.scalars(
        select(Person)
        .where(
            Person.workspace_id == workspace_id,
            func.lower(Person.email).in_({email.lower() for email in emails}),
        )
        .order_by(Person.id)
    )
    found: dict[str, Person] = {}
    for person in rows:
        if person.email:
            found.setdefault(person.email.lower(), person)
    return found


def listed_recipients(
    session: Session, composer: Composer, request: Mapping[str, Any], cursor: int, size: int
) -> RecipientBatch | None:
    """The next `size` people of a trigger's list (`ids`, `emails` or `per_user_data`), from
    position `cursor`; None past its end. Missing people were reported by
    `missing_recipients` before the first batch, and are passed over."""
    form = next(form for form in LIST_FORMS if form in request)
    chunk = request[form][cursor : cursor + size]
    if not chunk:
        return None
    batch = RecipientBatch(cursor=cursor + len(chunk))
    entries = [_entry(form, item, request.get("data", {})) for item in chunk]
    found = _people(session, composer.workspace_id, entries)
    for kind, key, variables in entries:
        person = found[kind].get(key if kind == "id" else key.lower())
        if person is None:
            continue
        if not person.email:
            batch.errors.append({"recipient": key, "error": NO_EMAIL})
        batch.letters.append(composer.letter(person, {"trigger": variables}))
    return batch


def missing_recipients(
    session: Session, workspace_id: int, request: Mapping[str, Any]
) -> list[tuple[dict[str, str], bool]]:
    """The people a trigger's list names who are not in the workspace, each as an error entry
    with whether the request's ignore flag lets the trigger go to the others anyway."""
    form = next((form for form in LIST_FORMS if form in request), None)
    if form is None:
        return []
    missing: list[tuple[dict[str, str], bool]] = []
    items = request[form]
    for start in range(0, len(items), BATCH_SIZE):
        entries = [_entry(form, item, {}) for item in items[start : start + BATCH_SIZE]]
        found = _people(session, workspace_id, entries)
        for kind, key, _ in entries:
            if (key if kind == "id" else key.lower()) in found[kind]:
                continue
            ignored = bool(request.get(f"{kind}_ignore_missing"))
            error = f"no person with this {kind} in the workspace"
            if ignored:
                error += f" (skipped: {kind}_ignore_missing)"
            missing.append(({"recipient": key, "error": error}, ignored))
    return missing


def _entry(form: str, item: Any, data: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(kind, id or email, `trigger.*` variables) for one item of a trigger's list; an item
    of `per_user_data` has its own data merged over the trigger's."""
    if form == "ids":
        return "id", item, dict(data)
    if form == "emails":
        return "email", item, dict(data)
    kind = "id" if item.get("id") is not None else "email"
    return kind, item[kind], {**data, **item.get("data", {})}


def _people(
    session: Session, workspace_id: int, entries: Sequence[tuple[str, str, Any]]
) -> dict[str, dict[str, Person]]:
    """The people the entries name, by kind, then by id or lower-cased email."""
    ids = [key for kind, key, _ in entries if kind == "id"]
    emails = [key for kind, key, _ in entries if kind == "email"]
    return {
        "id": people_by_id(session, workspace_id, ids),
        "email": people_by_email(session, workspace_id, emails),
    }
