"""Segments and who is in them.

Membership is stored (`SegmentMember`), not computed on read: campaigns start
when someone *enters* a segment, so every change that can move a person in or
out re-evaluates them here. A person's change re-evaluates that person against
every segment of the workspace; a segment's change re-evaluates every person of
the workspace against that segment, streamed in batches so that memory does not
grow with the workspace; segments with a time window are re-evaluated
periodically, since the passing of time alone moves people out of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from postyard import conditions
from postyard.conditions import All, Any_, Condition, ConditionError, Event, Facts, Not
from postyard.db.models import Campaign, Person, PersonEvent, Segment, SegmentMember
from postyard.services import triggers
from postyard.services.campaigns import State
from postyard.services.errors import Conflict, InvalidInput, NotFound
from postyard.services.fanout import Recipient
from postyard.services.runtime import Runtime
from postyard.services.workspaces import Caller

BATCH_SIZE = 1000


@dataclass(frozen=True)
class Rule:
    """A segment's conditions, parsed once for all the people they are evaluated for."""

    segment_id: int
    condition: Condition


@dataclass(frozen=True)
class MemberPage:
    members: list[tuple[Person, datetime]]
    next_cursor: int | None


def parse_conditions(tree: Any) -> Condition:
    """The parsed tree, or a 422 whose message points at the node at fault."""
    try:
        return conditions.parse(tree)
    except ConditionError as error:
        raise InvalidInput(str(error), code="invalid_conditions") from None


def list_segments(session: Session, caller: Caller) -> list[Segment]:
    return list(
        session.scalars(
            select(Segment).where(Segment.workspace_id == caller.workspace_id).order_by(Segment.id)
        )
    )


def get_segment(session: Session, caller: Caller, segment_id: int) -> Segment:
    segment = session.get(Segment, segment_id)
    if segment is None or segment.workspace_id != caller.workspace_id:
        raise NotFound(f"No segment with id {segment_id} in this workspace.")
    return segment


def create_segment(
    session: Session, runtime: Runtime, caller: Caller, name: str, tree: Any
) -> Segment:
    condition = parse_conditions(tree)
    now = runtime.clock()
    segment = Segment(
        workspace_id=caller.workspace_id,
        name=name,
        conditions=tree,
        time_window=conditions.has_time_window(condition),
        created_at=now,
        updated_at=now,
    )
    session.add(segment)
    session.flush()
    rules = [Rule(segment.id, condition)]
    _reevaluate_workspace(session, runtime, caller.workspace_id, rules, now)
    return segment


def update_segment(
    session: Session,
    runtime: Runtime,
    caller: Caller,
    segment_id: int,
    name: str | None,
    tree: Any,
) -> Segment:
    """Rename and/or replace the conditions; new conditions re-evaluate every person."""
    segment = get_segment(session, caller, segment_id)
    condition = None if tree is None else parse_conditions(tree)
    if name is not None:
        segment.name = name
    if condition is not None:
        segment.conditions = tree
        segment.time_window = conditions.has_time_window(condition)
    now = runtime.clock()
    segment.updated_at = now
    session.flush()
    if condition is not None:
        rules = [Rule(segment.id, condition)]
        _reevaluate_workspace(session, runtime, caller.workspace_id, rules, now)
    return segment


def count_matching(session: Session, caller: Caller, tree: Any, now: datetime) -> int:
    """How many people of the workspace `tree` holds for at `now`, storing nothing: the
    member count a segment with these conditions would have, for an editor to show before
    saving. Evaluated as `Memberships.refresh` does, batch by batch, one events query each."""
    condition = parse_conditions(tree)
    names = _event_names([Rule(0, condition)])
    count = 0
    for people in iter_people_batches(session, caller.workspace_id):
        events = _events_of(session, [person.id for person in people], names)
        count += sum(
            condition.holds(Facts(_attributes(person), events[person.id], now)) for person in people
        )
    return count


def delete_segment(session: Session, caller: Caller, segment_id: int) -> None:
    """Refused while a campaign that may still send uses the segment: its trigger would
    never fire again, or its audience would be empty, without a word."""
    segment = get_segment(session, caller, segment_id)
    users = _campaigns_using(session, segment)
    if users:
        named = ", ".join(f"{campaign.id} ({campaign.name!r})" for campaign in users)
        raise Conflict(
            f"Segment {segment.id} is used by campaign {named}: "
            "point the campaign at another segment first.",
            code="segment_in_use",
        )
    session.execute(delete(SegmentMember).where(SegmentMember.segment_id == segment.id))
    session.delete(segment)


def _campaigns_using(session: Session, segment: Segment) -> list[Campaign]:
    """Campaigns not yet done whose trigger or audience is `segment`."""
    campaigns = session.scalars(
        select(Campaign)
        .where(Campaign.workspace_id == segment.workspace_id, Campaign.state != State.SENT.value)
        .order_by(Campaign.id)
    )

    def uses(campaign: Campaign) -> bool:
        settings = (campaign.trigger or {}, campaign.audience or {})
        return any(setting.get("segment_id") == segment.id for setting in settings)

    return [campaign for campaign in campaigns if uses(campaign)]


def member_counts(session: Session, segment_ids: Collection[int]) -> dict[int, int]:
    rows = session.execute(
        select(SegmentMember.segment_id, func.count())
        .where(SegmentMember.segment_id.in_(segment_ids))
        .group_by(SegmentMember.segment_id)
    )
    counts = {segment_id: 0 for segment_id in segment_ids}
    counts.update({segment_id: count for segment_id, count in rows})
    return counts


def list_members(
    session: Session, caller: Caller, segment_id: int, limit: int, before: int | None
) -> MemberPage:
    """Most recently created people first; `before` is the cursor the previous page returned."""
    segment = get_segment(session, caller, segment_id)
    query = (
        select(Person, SegmentMember.entered_at)
        .join(SegmentMember, SegmentMember.person_pk == Person.id)
        .where(SegmentMember.segment_id == segment.id)
    )
    if before is not None:
        query = query.where(SegmentMember.person_pk < before)
    rows = [
        (person, entered_at)
        for person, entered_at in session.execute(
            query.order_by(SegmentMember.person_pk.desc()).limit(limit + 1)
        )
    ]
    next_cursor = rows[limit - 1][0].id if len(rows) > limit else None
    return MemberPage(rows[:limit], next_cursor)


def memberships_of(session: Session, person: Person) -> list[tuple[Segment, datetime]]:
    """The segments `person` is in, with when they entered each."""
    rows = session.execute(
        select(Segment, SegmentMember.entered_at)
        .join(SegmentMember, SegmentMember.segment_id == Segment.id)
        .where(SegmentMember.person_pk == person.id)
        .order_by(Segment.id)
    )
    return [(segment, entered_at) for segment, entered_at in rows]


def iter_people_batches(
    session: Session, workspace_id: int, batch_size: int = BATCH_SIZE
) -> Iterator[list[Person]]:
    """Every person of a workspace, `batch_size` at a time, by keyset on `Person.id`.

    Each batch is one query that starts after the last id seen, so the cost of a
    batch does not grow with how far the iteration has gone, and people added
    while it runs are not skipped or seen twice.
    """
    query = select(Person).where(Person.workspace_id == workspace_id)
    yield from _keyset_batches(session, query, batch_size)


def iter_member_batches(
    session: Session, segment_id: int, batch_size: int = BATCH_SIZE
) -> Iterator[list[Person]]:
    """The members of a segment, `batch_size` at a time, by keyset on `Person.id`."""
    query = (
        select(Person)
        .join(SegmentMember, SegmentMember.person_pk == Person.id)
        .where(SegmentMember.segment_id == segment_id)
    )
    yield from _keyset_batches(session, query, batch_size)


def _keyset_batches(session: Session, query: Any, batch_size: int) -> Iterator[list[Person]]:
    after = 0
    while True:
        batch = list(
            session.scalars(query.where(Person.id > after).order_by(Person.id).limit(batch_size))
        )
        if not batch:
            return
        yield batch
        after = batch[-1].id


def rules_for(session: Session, workspace_id: int) -> list[Rule]:
    """Every segment of a workspace, parsed (stored trees were valid when saved)."""
    rows = session.execute(
        select(Segment.id, Segment.conditions).where(Segment.workspace_id == workspace_id)
    )
    return [Rule(segment_id, conditions.parse(tree)) for segment_id, tree in rows]


def facts_for(session: Session, person: Recipient, now: datetime) -> Facts:
    """What conditions see of `person`: attributes, and the times of their events by name."""
    return Facts(_attributes(person), _events_of(session, [person.id], None)[person.id], now)


@dataclass(frozen=True)
class Changes:
    """What a refresh did: who entered which segments (by person pk), and how many left."""

    entered: dict[int, list[int]]
    left: int

    @property
    def count(self) -> int:
        return self.left + sum(len(ids) for ids in self.entered.values())


class Memberships:
    """The segment memberships of some people of one workspace, read once and kept in step.

    Evaluating a person takes their events and their current memberships. A
    batch of operations reads both for all its people in two queries, then keeps
    them up to date in memory as events are recorded and memberships change,
    instead of reading them again for every operation.
    """

    def __init__(self, session: Session, rules: Sequence[Rule], people: Sequence[Person]) -> None:
        self.session = session
        self.rules = rules
        self._names = _event_names(rules)
        self._events: dict[int, dict[str, list[datetime]]] = {}
        self._current: set[tuple[int, int]] = set()
        if rules and people:
            self._events = _events_of(session, [person.id for person in people], self._names)
            self._current = _current_members(session, rules, people)

    @classmethod
    def of_workspace(
        cls, session: Session, workspace_id: int, people: Sequence[Person]
    ) -> Memberships:
        return cls(session, rules_for(session, workspace_id), people)

    def add(self, person: Person) -> None:
        """A person created since: no events, no memberships."""
        self._events[person.id] = defaultdict(list)

    def record(self, event: PersonEvent) -> None:
        if event.name in self._names:
            self._events.setdefault(event.person_pk, defaultdict(list))[event.name].append(
                event.timestamp
            )

    def forget(self, person: Person) -> None:
        """A person deleted since (their rows are gone with them)."""
        self._events.pop(person.id, None)
        self._current -= {(rule.segment_id, person.id) for rule in self.rules}

    def refresh(self, people: Sequence[Person], now: datetime) -> Changes:
        """Insert and delete `SegmentMember` rows so that they match the rules for `people`.

        Entries are the rows actually inserted, so two refreshes racing for one
        person (a request and the periodic job, say) report an entry once.
        """
        if not self.rules:
            return Changes({}, 0)
        joining: list[dict[str, Any]] = []
        leaving: dict[int, list[int]] = defaultdict(list)
        for person in people:
            facts = Facts(_attributes(person), self._events.get(person.id, {}), now)
            for rule in self.rules:
                member = (rule.segment_id, person.id) in self._current
                holds = rule.condition.holds(facts)
                if holds and not member:
                    joining.append(
                        {"segment_id": rule.segment_id, "person_pk": person.id, "entered_at": now}
                    )
                elif member and not holds:
                    leaving[rule.segment_id].append(person.id)
        for segment_id, person_pks in leaving.items():
            self.session.execute(
                delete(SegmentMember).where(
                    SegmentMember.segment_id == segment_id,
                    SegmentMember.person_pk.in_(person_pks),
                )
            )
            self._current -= {(segment_id, person_pk) for person_pk in person_pks}
        entered: dict[int, list[int]] = defaultdict(list)
        if joining:
            dialect = self.session.bind.dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            inserted = self.session.execute(
                insert(SegmentMember)
                .on_conflict_do_nothing()
                .returning(SegmentMember.segment_id, SegmentMember.person_pk),
                joining,
            )
            for segment_id, person_pk in inserted:
                entered[person_pk].append(segment_id)
            self._current |= {(row["segment_id"], row["person_pk"]) for row in joining}
        return Changes(
            {person_pk: sorted(ids) for person_pk, ids in entered.items()},
            sum(len(pks) for pks in leaving.values()),
        )


def refresh_memberships(session: Session, person: Person, now: datetime) -> list[int]:
    """Re-evaluate `person` against every segment of their workspace; returns the ids of the
    segments they have just entered, for the caller to start segment-triggered campaigns."""
    memberships = Memberships.of_workspace(session, person.workspace_id, [person])
    return memberships.refresh([person], now).entered.get(person.id, [])


def refresh_time_windows(session: Session, runtime: Runtime) -> int:
    """Re-evaluate every segment whose conditions have a time window, for every person of its
    workspace, as of `runtime.clock()`; starts the campaigns of those who entered.

    Meant to be called periodically. Returns how many memberships changed (entries and exits).
    """
    now = runtime.clock()
    by_workspace: dict[int, list[Rule]] = defaultdict(list)
    for segment_id, workspace_id, tree in session.execute(
        select(Segment.id, Segment.workspace_id, Segment.conditions)
        .where(Segment.time_window.is_(True))
        .order_by(Segment.id)
    ):
        by_workspace[workspace_id].append(Rule(segment_id, conditions.parse(tree)))
    return sum(
        _reevaluate_workspace(session, runtime, workspace_id, rules, now)
        for workspace_id, rules in by_workspace.items()
    )


def _reevaluate_workspace(
    session: Session, runtime: Runtime, workspace_id: int, rules: Sequence[Rule], now: datetime
) -> int:
    """Bring `rules`' memberships up to date for every person of the workspace, in batches;
    returns how many memberships changed."""
    changed = 0
    for people in iter_people_batches(session, workspace_id):
        changes = Memberships(session, rules, people).refresh(people, now)
        changed += changes.count
        for person in people:
            if person.id in changes.entered:
                triggers.on_segment_entries(session, runtime, person, changes.entered[person.id])
    return changed


def _current_members(
    session: Session, rules: Sequence[Rule], people: Sequence[Person]
) -> set[tuple[int, int]]:
    rows = session.execute(
        select(SegmentMember.segment_id, SegmentMember.person_pk).where(
            SegmentMember.segment_id.in_([rule.segment_id for rule in rules]),
            SegmentMember.person_pk.in_([person.id for person in people]),
        )
    )
    return {(segment_id, person_pk) for segment_id, person_pk in rows}


def _events_of(
    session: Session, person_pks: Sequence[int], names: Collection[str] | None
) -> dict[int, dict[str, list[datetime]]]:
    """The times of each person's events by name, in one query; only `names` if given."""
    events: dict[int, dict[str, list[datetime]]] = {pk: defaultdict(list) for pk in person_pks}
    if names is not None and not names:
        return events
    query = select(PersonEvent.person_pk, PersonEvent.name, PersonEvent.timestamp).where(
        PersonEvent.person_pk.in_(person_pks)
    )
    if names is not None:
        query = query.where(PersonEvent.name.in_(names))
    for person_pk, name, timestamp in session.execute(query):
        events[person_pk][name].append(timestamp)
    return events


def _attributes(person: Recipient) -> Mapping[str, Any]:
    """The stored attributes, with `email` and `unsubscribed` (kept in columns) among them."""
    attributes = {**person.attributes, "unsubscribed": person.unsubscribed}
    if person.email is not None:
        attributes["email"] = person.email
    return attributes


def _event_names(rules: Sequence[Rule]) -> set[str]:
    """The event names any of `rules` asks about: the only events worth loading."""
    names: set[str] = set()
    pending: list[Condition] = [rule.condition for rule in rules]
    while pending:
        match pending.pop():
            case All(children) | Any_(children):
                pending.extend(children)
            case Not(child):
                pending.append(child)
            case Event(name=name):
                names.add(name)
    return names
