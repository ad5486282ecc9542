"""`/segments`: segments with their member counts, their condition trees, and who is in them.

A segment's conditions are typed either as the JSON tree (any depth) or with the
small builder (one level of attribute conditions, all or any of them). Every
change goes through `postyard.services.segments`; a tree it refuses comes back
with its message, which points at the node at fault, next to the builder row or
the JSON field it came from, and nothing is stored.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter

from postyard.api.context import AppContext, Context
from postyard.api.fields import Name, RowId
from postyard.api.people import check_json
from postyard.conditions import Operator
from postyard.services import segments
from postyard.services.errors import ServiceError
from postyard.web.common import CheckedForm, PageRoute, render, see_other
from postyard.web.forms import Form
from postyard.web.session import CurrentSession, WebSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

ROWS = 3
PAGE_SIZE = 50
OPERATOR_CHOICES = {
    Operator.EQ.value: "is",
    Operator.NEQ.value: "is not",
    Operator.EXISTS.value: "is set",
    Operator.NOT_EXISTS.value: "is not set",
    Operator.CONTAINS.value: "contains",
    Operator.STARTS_WITH.value: "starts with",
    Operator.IN.value: "is one of (comma-separated)",
    Operator.GT.value: "is greater than",
    Operator.GTE.value: "is at least",
    Operator.LT.value: "is less than",
    Operator.LTE.value: "is at most",
}
COMBINE_CHOICES = {"and": "all of these conditions", "or": "any of these conditions"}
UNARY = {Operator.EXISTS.value, Operator.NOT_EXISTS.value}
TEXT_ONLY = {Operator.CONTAINS.value, Operator.STARTS_WITH.value}
_NAME = TypeAdapter(Name)
_ROW_POINTER = re.compile(r"^\$\.(?:and|or)\[(\d+)\]")


def _value(operator: str, raw: str) -> Any:
    """What the builder's value box means: a number, true/false or text; a list for `in`."""
    if operator == Operator.IN.value:
        return [_value(Operator.EQ.value, part.strip()) for part in raw.split(",") if part.strip()]
    if operator in TEXT_ONLY:
        return raw
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, int | float | bool) else raw


def _builder_tree(form: Form) -> tuple[dict[str, Any] | None, list[int]]:
    """The builder's rows as a tree, and the row number (1-based) behind each child."""
    children: list[dict[str, Any]] = []
    rows: list[int] = []
    for row in range(1, ROWS + 1):
        field = form.text(f"c{row}_field")
        operator = form.text(f"c{row}_operator")
        raw = form.text(f"c{row}_value")
        if not field and not raw:
            continue
        if not field:
            form.errors[f"c{row}_field"] = "Enter the attribute this condition is about."
            continue
        node: dict[str, Any] = {"field": field, "operator": operator}
        if operator not in UNARY:
            node["value"] = _value(operator, raw)
        children.append({"attribute": node})
        rows.append(row)
    combine = form.text("combine")
    if combine not in COMBINE_CHOICES:
        form.errors["combine"] = "Choose whether all or any of the conditions must hold."
        return None, rows
    if not children:
        return None, rows
    return {combine: children}, rows


def segment_form(raw: dict[str, str]) -> tuple[Form, str | None, Any, list[int] | None]:
    """The name and the tree (from the JSON field, else the builder), with problems by field;
    the builder's row numbers when the tree came from it."""
    form = Form(raw)
    name = None
    if form.required("name", "Enter a name for this segment."):
        name = form.check("name", _NAME, form.text("name"))
    text = form.values.get("conditions", "").strip()
    rows: list[int] | None = None
    tree: Any = None
    if text:
        try:
            tree = json.loads(text)
            check_json(tree)
        except ValueError as error:
            form.errors["conditions"] = f"This is not a valid condition tree in JSON: {error}."
            tree = None
    else:
        tree, rows = _builder_tree(form)
        if tree is None and not form.errors:
            form.errors["conditions"] = (
                "Give the segment its conditions: fill in a row of the builder, "
                "or type the tree as JSON."
            )
    return form, name, tree, rows


def _place(form: Form, refused: ServiceError, rows: list[int] | None) -> None:
    """A refused tree's message by the builder row it points at, or by the JSON field."""
    match = _ROW_POINTER.match(refused.message)
    if rows is not None and match and int(match[1]) < len(rows):
        row = rows[int(match[1])]
        where = "value" if ".value" in refused.message else "field"
        if ".operator" in refused.message:
            where = "operator"
        form.errors[f"c{row}_{where}"] = refused.message
        return
    form.errors["conditions" if refused.code == "invalid_conditions" else "_form"] = refused.message


def _form_page(
    request: Request,
    web: WebSession,
    form: Form,
    *,
    segment: Any = None,
    status: int = 200,
) -> Response:
    return render(
        request,
        "segment_form.html",
        session=web,
        status=status,
        nav="segments",
        form=form,
        segment=segment,
        action=f"/segments/{segment.id}/edit" if segment else "/segments/new",
        rows=range(1, ROWS + 1),
        operators=OPERATOR_CHOICES,
        combines=COMBINE_CHOICES,
    )


@router.get("/segments")
def list_page(request: Request, web: CurrentSession, context: Context) -> Response:
    with context.database.session() as session:
        found = segments.list_segments(session, web.caller)
        counts = segments.member_counts(session, [s.id for s in found])
        rows = [
            {"id": s.id, "name": s.name, "members": counts[s.id], "time_window": s.time_window}
            for s in found
        ]
    return render(request, "segments.html", session=web, nav="segments", rows=rows)


@router.get("/segments/new")
def new_page(request: Request, web: CurrentSession) -> Response:
    return _form_page(request, web, Form({"combine": "and"}))


@router.post("/segments/new")
def create(request: Request, web: CurrentSession, form: CheckedForm, context: Context) -> Response:
    checked, name, tree, rows = segment_form(form)
    if not checked.ok:
        return _form_page(request, web, checked, status=422)
    try:
        with context.database.session() as session:
            segment = segments.create_segment(session, context.runtime, web.caller, name, tree)
            session.flush()
            segment_id = segment.id
    except ServiceError as refused:
        _place(checked, refused, rows)
        return _form_page(request, web, checked, status=refused.status)
    return see_other(f"/segments/{segment_id}?notice=created")


@router.get("/segments/{segment_id}/edit")
def edit_page(
    segment_id: RowId, request: Request, web: CurrentSession, context: Context
) -> Response:
    with context.database.session() as session:
        segment = segments.get_segment(session, web.caller, segment_id)
        values = {
            "name": segment.name,
            "conditions": json.dumps(segment.conditions, indent=2),
            "combine": "and",
        }
        session.expunge(segment)
    return _form_page(request, web, Form(values), segment=segment)


@router.post("/segments/{segment_id}/edit")
def edit(
    segment_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    with context.database.session() as session:
        segment = segments.get_segment(session, web.caller, segment_id)
        session.expunge(segment)
    checked, name, tree, rows = segment_form(form)
    if not checked.ok:
        return _form_page(request, web, checked, segment=segment, status=422)
    try:
        with context.database.session() as session:
            segments.update_segment(session, context.runtime, web.caller, segment_id, name, tree)
    except ServiceError as refused:
        if refused.status == 404:
            raise
        _place(checked, refused, rows)
        return _form_page(request, web, checked, segment=segment, status=refused.status)
    return see_other(f"/segments/{segment_id}?notice=saved")


@router.get("/segments/{segment_id}")
def segment_page(
    segment_id: RowId, request: Request, web: CurrentSession, context: Context
) -> Response:
    return _segment_page(request, context, web, segment_id)


def _segment_page(
    request: Request, context: AppContext, web: WebSession, segment_id: int
) -> Response:
    before_raw = request.query_params.get("before", "")
    before = int(before_raw) if before_raw.isascii() and before_raw.isdigit() else None
    if before is not None and before >= 2**31:
        before = None
    with context.database.session() as session:
        segment = segments.get_segment(session, web.caller, segment_id)
        members = segments.member_counts(session, [segment.id])[segment.id]
        page = segments.list_members(session, web.caller, segment_id, PAGE_SIZE, before)
        rows = [
            {"person_id": person.person_id, "email": person.email, "entered_at": entered_at}
            for person, entered_at in page.members
        ]
        session.expunge(segment)
    notice = {
        "created": f"Segment created: {members} {'person is' if members == 1 else 'people are'} "
        "in it.",
        "saved": f"Changes saved: {members} {'person is' if members == 1 else 'people are'} in it.",
    }.get(request.query_params.get("notice", ""))
    return render(
        request,
        "segment.html",
        session=web,
        nav="segments",
        s=segment,
        tree=json.dumps(segment.conditions, indent=2),
        members=members,
        rows=rows,
        older=f"/segments/{segment_id}?before={page.next_cursor}" if page.next_cursor else None,
        newest=f"/segments/{segment_id}" if before is not None else None,
        notice=notice,
    )
