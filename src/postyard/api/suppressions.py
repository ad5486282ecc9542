"""`/v1/suppressions`: the workspace's suppression list, to read and to edit by hand.

`POST` of an address already on the list is not an error: it answers 200 with the
entry as it stands (its first reason kept), where a new entry answers 201. A
script can then add addresses without first asking which are there.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import AfterValidator, BaseModel, StringConstraints

from postyard.api.context import Context, CurrentCaller
from postyard.api.fields import STRICT, EmailAddress, HeaderLine, RowId, Text
from postyard.clock import isoformat
from postyard.db.models import Suppression
from postyard.services import suppressions

router = APIRouter(prefix="/v1/suppressions", tags=["Suppressions"])

MANUAL = "added manually"


def _not_blank(value: str) -> str:
    """A reason of only spaces says nothing; the default says at least how it got there."""
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


Reason = Annotated[HeaderLine, AfterValidator(_not_blank)]
# What may name an entry in a path or a search: any text an address could hold, so
# that entries the worker stored from a bounce can be found and removed too.
AddressText = Annotated[Text, StringConstraints(max_length=320)]


class SuppressionCreate(BaseModel):
    model_config = STRICT

    email: EmailAddress
    reason: Reason = MANUAL


class SuppressionOut(BaseModel):
    email: str
    reason: str
    created_at: str | None

    @classmethod
    def of(cls, entry: Suppression) -> SuppressionOut:
        return cls(email=entry.email, reason=entry.reason, created_at=isoformat(entry.created_at))


class SuppressionPage(BaseModel):
    data: list[SuppressionOut]
    next_cursor: int | None


@router.get("")
def list_suppressions(
    caller: CurrentCaller,
    context: Context,
    email: AddressText | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: RowId | None = None,
) -> SuppressionPage:
    """Newest first; `email` matches any part of the address, in any case."""
    with context.database.session() as session:
        page = suppressions.list_suppressions(session, caller, email, limit, before)
        return SuppressionPage(
            data=[SuppressionOut.of(s) for s in page.suppressions], next_cursor=page.next_cursor
        )


@router.post("", status_code=201)
def add_suppression(
    body: SuppressionCreate, caller: CurrentCaller, context: Context, response: Response
) -> SuppressionOut:
    with context.database.session() as session:
        entry, added = suppressions.add_suppression(session, caller, body.email, body.reason)
        if not added:
            response.status_code = 200
        return SuppressionOut.of(entry)


@router.delete("/{email:path}", status_code=204)
def remove_suppression(email: AddressText, caller: CurrentCaller, context: Context) -> Response:
    with context.database.session() as session:
        suppressions.remove_suppression(session, caller, email)
    return Response(status_code=204)
