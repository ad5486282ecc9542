"""`/segments`: segments with their member counts, their condition trees, and who is in them.

A segment's conditions are typed either as the JSON tree (any depth) or with the
small builder (one level of attribute conditions, all or any of them); editing a
segment puts its tree back in the builder when the builder can show it exactly,
else in the JSON field with a note. Every change goes through
`postyard.services.segments`; a tree it refuses comes back with its message,
which points at the node at fault, next to the builder row or the JSON field it
came from, and nothing is stored.

"Count members" counts who the conditions hold for without saving: the button
posts the form and gets it back with the count (no script needed), and
`static/segment-count.js` asks `/segments/count` as the conditions change.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from postyard.api.context import AppContext, Context
from postyard.api.fields import Name, RowId
from postyard.api.people import check_json
from postyard.conditions import Operator
from postyard.services import segments
from postyard.services.errors import ServiceError
from postyard.web.common import (
    HEADERS,
    CheckedForm,
    PageRoute,
    delete_confirmation,
    render,
    see_other,
)
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


def _text(operator: str, value: Any) -> str:
    """A value as the builder's box shows it: the inverse of `_value`, where there is one."""
    if operator == Operator.IN.value:
        return ", ".join(_text(Operator.EQ.value, item) for item in value)
    return value if isinstance(value, str) else json.dumps(value)


def builder_values(tree: Any) -> dict[str, str] | None:
    """A stored tree as the builder's fields, or None when the builder cannot show it exactly
    (nesting, events, more rows than it has, a value its boxes would read back otherwise)."""
    if isinstance(tree, dict) and tree.keys() == {"attribute"}:
        tree = {"and": [tree]}
    if not (isinstance(tree, dict) and len(tree) == 1 and tree.keys() <= COMBINE_CHOICES.keys()):
        return None
    [(combine, children)] = tree.items()
    if not isinstance(children, list) or not 0 < len(children) <= ROWS:
        return None
    values = {"combine": combine, "conditions": ""}
    for row, child in enumerate(children, start=1):
        node = child.get("attribute") if isinstance(child, dict) and len(child) == 1 else None
        if not isinstance(node, dict) or node.get("operator") not in OPERATOR_CHOICES:
            return None
        values[f"c{row}_field"] = str(node.get("field", ""))
        values[f"c{row}_operator"] = node["operator"]
        if "value" in node:  # stored trees were parsed: `in` has a list
            values[f"c{row}_value"] = _text(node["operator"], node["value"])
    rebuilt, _ = _builder_tree(Form(dict(values)))
    return values if rebuilt == tree else None


def conditions_of(form: Form) -> tuple[Any, list[int] | None]:
    """The tree from the JSON field, else from the builder, with problems noted by field;
    and the builder's row numbers when the tree came from it."""
    text = form.values.get("conditions", "").strip()
    rows: list[int] | None = None
    tree: Any = None
    if text:
        try:
            tree = json.loads(text)
            check_json(tree)
        except (ValueError, RecursionError) as error:  # too deep for the parser is invalid too
            form.errors["conditions"] = f"This is not a valid condition tree in JSON: {error}."
            tree = None
    else:
        tree, rows = _builder_tree(form)
        if tree is None and not form.errors:
            form.errors["conditions"] = (
                "Give the segment its conditions: fill in a row of the builder, "
                "or type the tree as JSON."
            )
    return tree, rows


def segment_form(raw: dict[str, str]) -> tuple[Form, str | None, Any, list[int] | None]:
    """The name and the conditions (`conditions_of`), with problems by field."""
    form = Form(raw)
    name = None
    if form.required("name", "Enter a name for this segment."):
        name = form.check("name", _NAME, form.text("name"))
    tree, rows = conditions_of(form)
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
    count: int | None = None,
    builder_note: str | None = None,
) -> Response:
    return render(
        request,
        "segment_form.html",
        session=web,
        status=status,
        script="segment-count.js",
        nav="segments",
        form=form,
        segment=segment,
        action=f"/segments/{segment.id}/edit" if segment else "/segments/new",
        rows=range(1, ROWS + 1),
        operators=OPERATOR_CHOICES,
        combines=COMBINE_CHOICES,
        count=count,
        builder_note=builder_note,
    )


def _counted(form: Form, context: AppContext, web: WebSession) -> int | None:
    """How many people the form's conditions hold for now, or None with the problem noted
    on the field it is about. Nothing is stored."""
    tree, rows = conditions_of(form)
    if not form.ok:
        return None
    try:
        with context.database.session() as session:
            return segments.count_matching(session, web.caller, tree, context.clock())
    except ServiceError as refused:
        _place(form, refused, rows)
        return None


def _count_page(
    request: Request, context: AppContext, web: WebSession, raw: dict[str, str], segment: Any
) -> Response:
    """The form as posted, with the count, or with the problem that prevents counting."""
    form = Form(raw)
    count = _counted(form, context, web)
    status = 200 if count is not None else 422
    return _form_page(request, web, form, segment=segment, status=status, count=count)


@router.post("/segments/count")
def count(web: CurrentSession, form: CheckedForm, context: Context) -> JSONResponse:
    """The count for `segment-count.js`: `{member_count}`, or a 422 naming the field at fault."""
    checked = Form(form)
    counted = _counted(checked, context, web)
    if counted is None:
        field, message = next(iter(checked.errors.items()))
        return JSONResponse(
            {"error": {"code": "invalid_conditions", "message": message, "field": field}},
            status_code=422,
            headers=HEADERS,
        )
    return JSONResponse({"member_count": counted}, headers=HEADERS)


@router.get("/segments")
def list_page(request: Request, web: CurrentSession, context: Context) -> Response:
    with context.database.session() as session:
        found = segments.list_segments(session, web.caller)
        counts = segments.member_counts(session, [s.id for s in found])
        rows = [
            {"id": s.id, "name": s.name, "members": counts[s.id], "time_window": s.time_window}
            for s in found
        ]
    notice = {"deleted": "The segment was deleted."}.get(request.query_params.get("notice", ""))
    return render(request, "segments.html", session=web, nav="segments", rows=rows, notice=notice)


@router.get("/segments/new")
def new_page(request: Request, web: CurrentSession) -> Response:
    return _form_page(request, web, Form({"combine": "and"}))


@router.post("/segments/new")
def create(request: Request, web: CurrentSession, form: CheckedForm, context: Context) -> Response:
    if form.get("action") == "count":
        return _count_page(request, context, web, form, None)
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
        session.expunge(segment)
    values = builder_values(segment.conditions)
    note = None
    if values is None:
        values = {"conditions": json.dumps(segment.conditions, indent=2), "combine": "and"}
        note = (
            "These conditions are more than the builder can show (nesting, events, or more "
            f"than {ROWS} conditions): edit them as JSON below."
        )
    form = Form({"name": segment.name, **values})
    return _form_page(request, web, form, segment=segment, builder_note=note)


@router.post("/segments/{segment_id}/edit")
def edit(
    segment_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    with context.database.session() as session:
        segment = segments.get_segment(session, web.caller, segment_id)
        session.expunge(segment)
    if form.get("action") == "count":
        return _count_page(request, context, web, form, segment)
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


def _delete_page(
    request: Request, web: WebSession, segment: Any, *, error: str | None = None, status: int = 200
) -> Response:
    return delete_confirmation(
        request,
        web,
        section="segments",
        label="Segments",
        object_id=segment.id,
        name=segment.name,
        consequences=[
            "Its memberships go with it. People, and mail already sent to its members, stay.",
            "A segment that a campaign still uses cannot be deleted: point the campaign at "
            "another segment first.",
        ],
        error=error,
        status=status,
    )


@router.get("/segments/{segment_id}/delete")
def delete_page(
    segment_id: RowId, request: Request, web: CurrentSession, context: Context
) -> Response:
    with context.database.session() as session:
        segment = segments.get_segment(session, web.caller, segment_id)
        session.expunge(segment)
    return _delete_page(request, web, segment)


@router.post("/segments/{segment_id}/delete")
def delete(
    segment_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    with context.database.session() as session:
        segment = segments.get_segment(session, web.caller, segment_id)
        session.expunge(segment)
    try:
        with context.database.session() as session:
            segments.delete_segment(session, web.caller, segment_id)
    except ServiceError as refused:
        if refused.status == 404:
            raise
        return _delete_page(request, web, segment, error=refused.message, status=refused.status)
    return see_other("/segments?notice=deleted")
