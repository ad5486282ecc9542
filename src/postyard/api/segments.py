"""`/v1/segments`: groups of people defined by a condition tree, kept up to date."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import AfterValidator, BaseModel
from sqlalchemy.orm import Session

from postyard.api.context import Context, CurrentCaller
from postyard.api.fields import STRICT, Name, Patch, RowId
from postyard.api.people import check_json
from postyard.clock import isoformat
from postyard.db.models import Segment
from postyard.services import segments

router = APIRouter(prefix="/v1/segments", tags=["Segments"])

# Each level of a condition tree is two levels of JSON (an object, then a list or an object).
MAX_TREE_DEPTH = 64


def _tree(tree: Any) -> Any:
    """Only JSON storage can take; whether it is a valid tree is the service's to say, with
    a pointer to the node at fault."""
    check_json(tree, MAX_TREE_DEPTH)
    return tree


ConditionTree = Annotated[Any, AfterValidator(_tree)]


class SegmentCreate(BaseModel):
    model_config = STRICT

    name: Name
    conditions: ConditionTree


class SegmentPatch(Patch):
    """Only the fields sent change; new conditions re-evaluate every person."""

    name: Name | None = None
    conditions: ConditionTree = None


class SegmentPreview(BaseModel):
    model_config = STRICT

    conditions: ConditionTree


class MemberCount(BaseModel):
    member_count: int


class SegmentOut(BaseModel):
    id: int
    name: str
    conditions: Any
    time_window: bool
    member_count: int
    created_at: str | None
    updated_at: str | None

    @classmethod
    def of(cls, segment: Segment, member_count: int) -> SegmentOut:
        return cls(
            id=segment.id,
            name=segment.name,
            conditions=segment.conditions,
            time_window=segment.time_window,
            member_count=member_count,
            created_at=isoformat(segment.created_at),
            updated_at=isoformat(segment.updated_at),
        )


class SegmentList(BaseModel):
    data: list[SegmentOut]


class Member(BaseModel):
    person_id: str
    email: str | None
    entered_at: str | None


class MemberPage(BaseModel):
    data: list[Member]
    next_cursor: int | None


@router.post("", status_code=201)
def create_segment(body: SegmentCreate, caller: CurrentCaller, context: Context) -> SegmentOut:
    """Create the segment and work out its members among everyone in the workspace."""
    with context.database.session() as session:
        segment = segments.create_segment(
            session, context.runtime, caller, body.name, body.conditions
        )
        return _out(session, segment)


@router.post("/preview")
def preview_segment(body: SegmentPreview, caller: CurrentCaller, context: Context) -> MemberCount:
    """How many people the conditions hold for now, without storing anything: the member
    count a segment created with them would start with. 422 `invalid_conditions` as for
    create."""
    with context.database.session() as session:
        count = segments.count_matching(session, caller, body.conditions, context.clock())
    return MemberCount(member_count=count)


@router.get("")
def list_segments(caller: CurrentCaller, context: Context) -> SegmentList:
    with context.database.session() as session:
        found = segments.list_segments(session, caller)
        counts = segments.member_counts(session, [segment.id for segment in found])
        return SegmentList(data=[SegmentOut.of(s, counts[s.id]) for s in found])


@router.get("/{segment_id}")
def get_segment(segment_id: RowId, caller: CurrentCaller, context: Context) -> SegmentOut:
    with context.database.session() as session:
        return _out(session, segments.get_segment(session, caller, segment_id))


@router.patch("/{segment_id}")
def update_segment(
    segment_id: RowId, body: SegmentPatch, caller: CurrentCaller, context: Context
) -> SegmentOut:
    with context.database.session() as session:
        segment = segments.update_segment(
            session, context.runtime, caller, segment_id, body.name, body.conditions
        )
        return _out(session, segment)


@router.delete("/{segment_id}", status_code=204)
def delete_segment(segment_id: RowId, caller: CurrentCaller, context: Context) -> Response:
    with context.database.session() as session:
        segments.delete_segment(session, caller, segment_id)
    return Response(status_code=204)


@router.get("/{segment_id}/members")
def list_members(
    segment_id: RowId,
    caller: CurrentCaller,
    context: Context,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: RowId | None = None,
) -> MemberPage:
    """Most recently created people first; pass `next_cursor` as `before` for the next page."""
    with context.database.session() as session:
        page = segments.list_members(session, caller, segment_id, limit, before)
        return MemberPage(
            data=[
                Member(
                    person_id=person.person_id,
                    email=person.email,
                    entered_at=isoformat(entered_at),
                )
                for person, entered_at in page.members
            ],
            next_cursor=page.next_cursor,
        )


def _out(session: Session, segment: Segment) -> SegmentOut:
    return SegmentOut.of(segment, segments.member_counts(session, [segment.id])[segment.id])
