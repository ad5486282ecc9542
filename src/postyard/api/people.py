"""`/v1/people` and `/v1/batch`: the people a workspace writes to, and their events.

Shaped after Customer.io's Track API: `PUT` identifies (creates or merges
attributes; `null` removes one), events may arrive for people not seen yet, and
a batch carries many operations, each answered on its own.
"""

from __future__ import annotations

import json
import math
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from postyard.api.context import Context, CurrentCaller, TrackCaller
from postyard.api.fields import STRICT, EmailAddress, Name, RowId
from postyard.clock import isoformat
from postyard.db.models import Person, PersonEvent
from postyard.services import people, segments
from postyard.services.errors import InvalidInput, ServiceError

router = APIRouter(tags=["People"])

MAX_BATCH = 1000
MAX_NAME_LENGTH = 150
MAX_DEPTH = 16
MAX_EVENT_DATA_BYTES = 100_000
EPOCH = datetime(1970, 1, 1)
_EMAIL: TypeAdapter[str] = TypeAdapter(EmailAddress)


def check_json(value: Any, max_depth: int = MAX_DEPTH, where: str = "") -> None:
    """Refuse what JSON parsing lets through but storage cannot take.

    Python's parser accepts NaN and Infinity, which PostgreSQL's `json` refuses
    (a 500 at insert time), and any nesting depth, which recursive code later
    trips over. NUL is refused in text, as everywhere in Postyard.
    """
    label = where or "the value"
    if max_depth < 0:
        raise ValueError(f"{label} is nested too deeply")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{label} must not contain NUL characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{label} must be a finite number")
    if isinstance(value, list):
        for index, item in enumerate(value):
            check_json(item, max_depth - 1, f"{where}[{index}]")
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise ValueError(f"{label} has a key with a NUL character")
            check_json(item, max_depth - 1, f"{where}.{key}" if where else key)


def _person_id(value: str) -> str:
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("must not contain control characters")
    return value


def _attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attribute names and values as a person may carry them; `email` must be an address and
    `unsubscribed` true or false (either may be null, to remove it)."""
    for name, value in attributes.items():
        if not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise ValueError(f"attribute names take 1 to {MAX_NAME_LENGTH} characters: '{name}'")
        if any(unicodedata.category(char) == "Cc" for char in name):
            raise ValueError(f"attribute name {name!r} must not contain control characters")
        check_json(value, where=name)
    email = attributes.get(people.EMAIL)
    if email is not None:
        if not isinstance(email, str):
            raise ValueError("email must be a string (or null, to remove it)")
        try:
            attributes[people.EMAIL] = _EMAIL.validate_python(email)
        except ValidationError as error:
            message = str(error.errors()[0]["msg"]).removeprefix("Value error, ")
            raise ValueError(f"email: {message}") from None
    unsubscribed = attributes.get(people.UNSUBSCRIBED)
    if unsubscribed is not None and not isinstance(unsubscribed, bool):
        raise ValueError("unsubscribed must be true or false (or null, to remove it)")
    return attributes


def _event_data(data: dict[str, Any]) -> dict[str, Any]:
    check_json(data)
    size = len(json.dumps(data, ensure_ascii=False).encode())
    if size > MAX_EVENT_DATA_BYTES:
        raise ValueError(f"takes at most {MAX_EVENT_DATA_BYTES} bytes as JSON, not {size}")
    return data


def _timestamp(value: Any) -> datetime:
    """ISO 8601 (UTC unless it says otherwise) or Unix seconds, stored as naive UTC.

    Both forms must fall between 1970 and 9999: a moment outside is a mistake,
    most often milliseconds sent as seconds.
    """
    try:
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            moment = datetime.fromtimestamp(value, UTC)
        else:
            raise TypeError
        moment = moment.astimezone(UTC).replace(tzinfo=None)
        if moment < EPOCH:
            raise ValueError
        return moment
    except (ValueError, OverflowError, OSError, TypeError):
        raise ValueError(
            "must be an ISO 8601 time or a number of Unix seconds (not milliseconds), "
            f"between 1970 and 9999, not {value!r:.60}"
        ) from None


PersonId = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_person_id)
]
Attributes = Annotated[dict[str, Any], AfterValidator(_attributes)]
EventData = Annotated[dict[str, Any], AfterValidator(_event_data)]
Timestamp = Annotated[datetime, PlainValidator(_timestamp, json_schema_input_type=str | float)]
PersonIdPath = Annotated[PersonId, Path()]


class EventIn(BaseModel):
    model_config = STRICT

    name: Name
    data: EventData = Field(default_factory=dict)
    timestamp: Timestamp | None = None


class PersonOut(BaseModel):
    id: str
    email: str | None
    unsubscribed: bool
    attributes: dict[str, Any]
    created_at: str | None
    updated_at: str | None

    @classmethod
    def of(cls, person: Person) -> PersonOut:
        return cls(
            id=person.person_id,
            email=person.email,
            unsubscribed=person.unsubscribed,
            attributes=person.attributes,
            created_at=isoformat(person.created_at),
            updated_at=isoformat(person.updated_at),
        )


class Membership(BaseModel):
    id: int
    name: str
    entered_at: str | None


class PersonDetail(PersonOut):
    segments: list[Membership]


class PeoplePage(BaseModel):
    data: list[PersonOut]
    next_cursor: int | None


class EventOut(BaseModel):
    id: int
    person_id: str
    name: str
    data: dict[str, Any]
    timestamp: str | None

    @classmethod
    def of(cls, event: PersonEvent, person_id: str) -> EventOut:
        return cls(
            id=event.id,
            person_id=person_id,
            name=event.name,
            data=event.data,
            timestamp=isoformat(event.timestamp),
        )


class IdentifyOperation(BaseModel):
    model_config = STRICT

    type: Literal["identify"]
    person_id: PersonId
    attributes: Attributes = Field(default_factory=dict)

    def operation(self) -> people.Operation:
        return people.Identify(self.person_id, self.attributes)


class EventOperation(EventIn):
    type: Literal["event"]
    person_id: PersonId

    def operation(self) -> people.Operation:
        return people.Track(self.person_id, self.name, self.data, self.timestamp)


class DeleteOperation(BaseModel):
    model_config = STRICT

    type: Literal["delete"]
    person_id: PersonId

    def operation(self) -> people.Operation:
        return people.Forget(self.person_id)


_OPERATION: TypeAdapter[IdentifyOperation | EventOperation | DeleteOperation] = TypeAdapter(
    Annotated[IdentifyOperation | EventOperation | DeleteOperation, Field(discriminator="type")]
)


class BatchIn(BaseModel):
    model_config = STRICT

    batch: Annotated[list[Any], Field(min_length=1, max_length=MAX_BATCH)]


class BatchError(BaseModel):
    code: str
    message: str


class BatchResult(BaseModel):
    index: int
    ok: bool
    error: BatchError | None = None


class BatchOut(BaseModel):
    results: list[BatchResult]


@router.put(
    "/v1/people/{person_id}",
    status_code=200,
    responses={201: {"model": PersonOut, "description": "The person was created."}},
)
def identify(
    person_id: PersonIdPath,
    attributes: Annotated[Attributes, Body()],
    caller: TrackCaller,
    context: Context,
    response: Response,
) -> PersonOut:
    """Create the person or merge `attributes` into theirs: 201 when created, 200 otherwise."""
    with context.database.session() as session:
        identified = people.identify(
            session, context.runtime, caller, people.Identify(person_id, attributes)
        )
        response.status_code = 201 if identified.created else 200
        return PersonOut.of(identified.person)


@router.get("/v1/people")
def find_people(
    caller: CurrentCaller,
    context: Context,
    email: EmailAddress | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: RowId | None = None,
) -> PeoplePage:
    """Newest first; `email` finds the people with that address."""
    with context.database.session() as session:
        page = people.find_people(session, caller, email, limit, before)
        return PeoplePage(data=[PersonOut.of(p) for p in page.people], next_cursor=page.next_cursor)


@router.get("/v1/people/{person_id}")
def get_person(person_id: PersonIdPath, caller: CurrentCaller, context: Context) -> PersonDetail:
    with context.database.session() as session:
        person = people.get_person(session, caller, person_id)
        memberships = [
            Membership(id=segment.id, name=segment.name, entered_at=isoformat(entered_at))
            for segment, entered_at in segments.memberships_of(session, person)
        ]
        return PersonDetail(**PersonOut.of(person).model_dump(), segments=memberships)


@router.delete("/v1/people/{person_id}", status_code=204)
def delete_person(person_id: PersonIdPath, caller: TrackCaller, context: Context) -> Response:
    """Delete the person, their events and memberships; their waiting mail is cancelled."""
    with context.database.session() as session:
        people.forget(session, context.runtime, caller, people.Forget(person_id))
    return Response(status_code=204)


@router.post("/v1/people/{person_id}/events", status_code=201)
def track_event(
    person_id: PersonIdPath, body: EventIn, caller: TrackCaller, context: Context
) -> EventOut:
    operation = people.Track(person_id, body.name, body.data, body.timestamp)
    with context.database.session() as session:
        event = people.track(session, context.runtime, caller, operation)
        return EventOut.of(event, person_id)


@router.post("/v1/batch", response_model_exclude_none=True)
def batch(body: BatchIn, caller: TrackCaller, context: Context) -> BatchOut:
    """Up to 1,000 identify, event and delete operations, applied in order in one transaction.

    Each is answered on its own: a malformed or refused one spares the others.
    """
    errors: dict[int, ServiceError] = {}
    valid: dict[int, people.Operation] = {}
    for index, raw in enumerate(body.batch):
        try:
            valid[index] = _OPERATION.validate_python(raw).operation()
        except ValidationError as error:
            errors[index] = InvalidInput(_describe(error))
    with context.database.session() as session:
        outcomes = people.apply_batch(session, context.runtime, caller, list(valid.values()))
    errors.update({index: e for index, e in zip(valid, outcomes, strict=True) if e is not None})
    return BatchOut(results=[_result(index, errors.get(index)) for index in range(len(body.batch))])


def _result(index: int, error: ServiceError | None) -> BatchResult:
    if error is None:
        return BatchResult(index=index, ok=True)
    return BatchResult(
        index=index, ok=False, error=BatchError(code=error.code, message=error.message)
    )


def _describe(error: ValidationError) -> str:
    """An operation's problems as a person would say them: where, then what.

    The first part of a location is the operation's type (the union's tag), which
    the caller knows already.
    """
    problems = []
    for problem in error.errors(include_url=False):
        location = ".".join(str(part) for part in problem["loc"][1:])
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            problems.append(f"unknown field '{location}'")
        else:
            problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)
