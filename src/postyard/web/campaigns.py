"""`/campaigns`: the four campaign types, their messages with a preview, their state, a
newsletter's send, a broadcast's trigger, and where each campaign's mail went.

Every change goes through `postyard.services.campaigns`, so a campaign is saved
only whole and valid, exactly as through the API; a refusal is shown next to the
field it is about and nothing is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from postyard import templating
from postyard.api.campaigns import SendBody, TriggerBody
from postyard.api.context import AppContext, Context
from postyard.api.fields import HeaderLine, Mailbox, Name, RowId, Text
from postyard.api.people import check_json
from postyard.db.models import Campaign
from postyard.routing import CampaignType, Via
from postyard.services import campaigns, fanout, people, segments, smtp_servers
from postyard.services.campaigns import CampaignSpec, Frequency, State, TriggerRequest
from postyard.services.errors import NotFound, ServiceError
from postyard.services.routing_report import routing_report
from postyard.web.common import CheckedForm, PageRoute, delete_confirmation, render, see_other
from postyard.web.forms import Form
from postyard.web.session import CurrentSession, WebSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

TYPE_LABELS = {t.value: t.label for t in CampaignType}
TYPE_HINTS = {
    CampaignType.SEGMENT_TRIGGERED.value: "Sent to each person when they enter a segment.",
    CampaignType.EVENT_TRIGGERED.value: "Sent to a person when they do something (an event).",
    CampaignType.NEWSLETTER.value: "Sent once, to a segment or to everyone.",
    CampaignType.TRIGGERED_BROADCAST.value: "Sent to its audience each time it is triggered.",
}
FREQUENCY_CHOICES = {
    Frequency.EVERY.value: "Every time the event happens",
    Frequency.ONCE.value: "Only the first time, once per person",
}
RECIPIENT_CHOICES = {
    "audience": "Its audience, as set on the broadcast",
    "ids": "These people, by id (one per line)",
    "emails": "These people, by email address (one per line)",
    "per_user_data": "These people, each with data of their own (JSON list)",
    "recipients": "The people a condition tree holds for (JSON)",
}
LISTED = {"ids": "id", "emails": "email"}
MESSAGE_FIELDS = ("from", "reply_to", "subject", "text", "html")
PREVIEW_URL = "https://postyard.example/unsubscribe/preview"

_NAME = TypeAdapter(Name)
_MAILBOX = TypeAdapter(Mailbox)
_HEADER = TypeAdapter(HeaderLine)
_TEXT = TypeAdapter(Text)


@dataclass(frozen=True)
class Preview:
    person_id: str
    rendered: templating.Rendered | None
    error: str | None


# ------------------------------------------------------------------ reading the form


def _multiline(form: Form, name: str) -> str:
    return form.values.get(name, "").replace("\r\n", "\n")


def _address(form: Form, name: str) -> str | None:
    """A from/reply-to: an address now, or Liquid checked for each person when sent."""
    value = form.text(name)
    if "{{" in value or "{%" in value:
        return form.check(name, _HEADER, value)
    return form.check(name, _MAILBOX, value)


def _segment_choice(form: Form, name: str, segment_ids: set[int], blank: str) -> int | None:
    raw = form.text(name)
    if raw.isascii() and raw.isdigit() and int(raw) in segment_ids:
        return int(raw)
    form.errors[name] = blank
    return None


def _json_tree(form: Form, name: str, *, optional: bool) -> dict[str, Any] | None:
    raw = form.values.get(name, "").strip()
    if not raw and optional:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as error:
        form.errors[name] = f"This is not valid JSON: {error}."
        return None
    if not isinstance(value, dict):
        form.errors[name] = 'Enter a JSON object, like {"attribute": {…}}.'
        return None
    try:
        check_json(value)
    except ValueError as error:
        form.errors[name] = f"{str(error)[:1].upper()}{str(error)[1:]}."
        return None
    return value


def message_of(form: Form) -> dict[str, str | None]:
    """The message fields as typed, checked one by one (syntax is the service's, later)."""
    message: dict[str, str | None] = {}
    if form.required("from", "Enter the sender, like Acme <news@acme.example>."):
        message["from"] = _address(form, "from")
    message["reply_to"] = _address(form, "reply_to") if form.text("reply_to") else None
    if form.required("subject", "Enter a subject."):
        message["subject"] = form.check("subject", _HEADER, form.text("subject"))
    for body in ("text", "html"):
        raw = _multiline(form, body)
        message[body] = form.check(body, _TEXT, raw) if raw.strip() else None
    if message.get("text") is None and message.get("html") is None and "text" not in form.errors:
        form.errors["text"] = "Write the message: a text body, an HTML body or both."
    return message


def _syntax(form: Form, message: dict[str, str | None]) -> templating.MessageTemplate | None:
    try:
        return templating.compile_message(message)
    except templating.TemplateSyntaxError as error:
        form.errors[error.field] = (
            f"Liquid error at line {error.line}, column {error.column}: {error.reason}."
        )
        return None


def campaign_form(
    raw: dict[str, str], campaign_type: CampaignType, segment_ids: set[int]
) -> tuple[Form, dict[str, Any] | None]:
    """The campaign's settings for its type, or None with each problem on its field."""
    form = Form(raw)
    settings: dict[str, Any] = {}
    if form.required("name", "Enter a name for this campaign."):
        settings["name"] = form.check("name", _NAME, form.text("name"))
    message = message_of(form)
    if form.ok:
        _syntax(form, message)
    settings["message"] = message
    if campaign_type == CampaignType.SEGMENT_TRIGGERED:
        segment_id = _segment_choice(
            form, "segment_id", segment_ids, "Choose the segment whose new members get it."
        )
        settings["trigger"] = {"segment_id": segment_id}
        settings["re_entry"] = form.values.get("re_entry") == "yes"
        settings["include_existing"] = form.values.get("include_existing") == "yes"
    elif campaign_type == CampaignType.EVENT_TRIGGERED:
        trigger: dict[str, Any] = {}
        if form.required("event_name", "Enter the name of the event that sends it."):
            trigger["event_name"] = form.check("event_name", _NAME, form.text("event_name"))
        tree = _json_tree(form, "filter", optional=True)
        if tree is not None:
            trigger["filter"] = tree
        settings["trigger"] = trigger
        frequency = form.text("frequency")
        if frequency not in FREQUENCY_CHOICES:
            form.errors["frequency"] = "Choose how often a person may get it."
        else:
            settings["frequency"] = Frequency(frequency)
    else:
        audience = form.text("audience")
        if audience == "all":
            settings["audience"] = {"all": True}
        else:
            segment_id = _segment_choice(
                form, "audience", segment_ids, "Choose everyone or one of the segments."
            )
            settings["audience"] = {"segment_id": segment_id}
    return form, (settings if form.ok else None)


def trigger_request(form: Form) -> TriggerRequest | None:
    """A trigger as the API takes it (`TriggerBody` checks it, so the form accepts what
    the API accepts), or None with each problem on its field."""
    data = _json_tree(form, "data", optional=True)
    send_to = form.text("send_to") or "audience"
    raw = form.values.get("recipients_list", "").strip()
    body: dict[str, Any] = {"data": data or {}}
    if send_to not in RECIPIENT_CHOICES:
        form.errors["send_to"] = "Choose who gets this trigger's messages."
    elif send_to in LISTED:
        body[send_to] = [line.strip() for line in raw.splitlines() if line.strip()]
        body[f"{LISTED[send_to]}_ignore_missing"] = form.values.get("ignore_missing") == "yes"
        if not body[send_to]:
            form.errors["recipients_list"] = f"Enter the {send_to} to send to, one per line."
    elif send_to != "audience":
        try:
            body[send_to] = json.loads(raw)
        except (ValueError, RecursionError) as error:  # too deep is not valid JSON either
            form.errors["recipients_list"] = f"This is not valid JSON: {error}."
    if not form.ok:
        return None
    try:
        return TriggerBody.model_validate_json(json.dumps(body)).request()
    except ValidationError as error:
        problem = error.errors()[0]
        loc = problem["loc"]
        where = ".".join(str(part) for part in loc)
        if len(loc) > 1 and loc[0] in LISTED and isinstance(loc[1], int):
            where = f"line {loc[1] + 1}"
        message = str(problem["msg"]).removeprefix("Value error, ")
        form.errors["data" if where.startswith("data") else "recipients_list"] = (
            f"{where}: {message}." if where else f"{message[:1].upper()}{message[1:]}."
        )
        return None


def _send_at(form: Form) -> tuple[bool, datetime | None]:
    """The optional schedule, as the API reads `send_at` (a time without a zone is UTC);
    False when it cannot be read, with the problem noted."""
    raw = form.text("send_at")
    if not raw:
        return True, None
    try:
        return True, SendBody.model_validate_json(json.dumps({"send_at": raw})).send_at
    except ValidationError:
        form.errors["send_at"] = "Enter a date and time like 2030-01-31 09:00 (UTC)."
        return False, None


def _place(form: Form, refused: ServiceError) -> None:
    """Put a refusal of the service next to the field it is about."""
    text = refused.message
    for token, name in (
        ("message.from", "from"),
        ("message.reply_to", "reply_to"),
        ("message.subject", "subject"),
        ("message.text", "text"),
        ("message.html", "html"),
        ("message needs a body", "text"),
        ("trigger.segment_id", "segment_id"),
        ("trigger.event_name", "event_name"),
        ("trigger.filter", "filter"),
        ("audience", "audience"),
    ):
        if token in text:
            form.errors[name] = text
            return
    form.errors["_form"] = text


# ------------------------------------------------------------------ what pages show


def _segment_choices(session: Session, web: WebSession) -> dict[str, str]:
    return {str(s.id): s.name for s in segments.list_segments(session, web.caller)}


def _server_names(session: Session, web: WebSession) -> dict[str, str]:
    return {str(s.id): s.name for s in smtp_servers.list_servers(session, web.caller)}


def values_of(campaign: Campaign) -> dict[str, str]:
    """A stored campaign as its edit form shows it."""
    spec = campaigns.spec_of(campaign)
    values = {name: spec.message.get(name) or "" for name in MESSAGE_FIELDS}
    values["name"] = spec.name
    trigger = spec.trigger or {}
    audience = spec.audience or {}
    values["segment_id"] = str(trigger.get("segment_id", ""))
    values["event_name"] = trigger.get("event_name", "")
    values["filter"] = json.dumps(trigger["filter"], indent=2) if "filter" in trigger else ""
    values["frequency"] = spec.frequency.value if spec.frequency else Frequency.EVERY.value
    values["re_entry"] = "yes" if spec.re_entry else ""
    values["include_existing"] = "yes" if spec.include_existing else ""
    values["audience"] = "all" if audience.get("all") else str(audience.get("segment_id", ""))
    return values


def describe(campaign: Campaign, segment_names: dict[str, str]) -> str:
    """Who gets the campaign and when, in words."""
    trigger = campaign.trigger or {}
    audience = campaign.audience or {}

    def segment(segment_id: Any) -> str:
        name = segment_names.get(str(segment_id), f"#{segment_id}")
        return f"segment “{name}”"

    if campaign.type == CampaignType.SEGMENT_TRIGGERED:
        return f"Each person entering {segment(trigger.get('segment_id'))}."
    if campaign.type == CampaignType.EVENT_TRIGGERED:
        words = f"Each time a person does “{trigger.get('event_name')}”"
        if (campaign.options or {}).get("frequency") == Frequency.ONCE:
            words = f"The first time a person does “{trigger.get('event_name')}”"
        return words + (", if the event's data matches the filter." if "filter" in trigger else ".")
    who = "everyone" if audience.get("all") else segment(audience.get("segment_id"))
    if campaign.type == CampaignType.NEWSLETTER:
        return f"Once, to {who}."
    return f"To {who}, each time it is triggered."


def _route(session: Session, context: AppContext, web: WebSession, kind: str) -> dict[str, Any]:
    report = routing_report(session, web.caller, context.settings.default_smtp_url is not None)
    line = next(r for r in report.routes if r.campaign_type.value == kind)
    if line.smtp_server_name is not None:
        target = line.smtp_server_name
    elif line.via == Via.DEFAULT_RELAY:
        target = "the default relay"
    else:
        target = None
    return {
        "target": target,
        "server_id": line.smtp_server_id,
        "via": line.via.value if line.via else None,
        "explanation": line.explanation,
    }


# ------------------------------------------------------------------ the list


@router.get("/campaigns")
def list_page(request: Request, web: CurrentSession, context: Context) -> Response:
    with context.database.session() as session:
        rows = []
        for campaign in campaigns.list_campaigns(session, web.caller):
            counted = campaigns.counts(session, campaign)
            rows.append(
                {
                    "id": campaign.id,
                    "name": campaign.name,
                    "type_label": TYPE_LABELS.get(campaign.type, campaign.type),
                    "state": campaign.state,
                    "total": sum(counted.by_status.values()),
                    "sent": counted.by_status.get("sent", 0),
                    "waiting": sum(
                        counted.by_status.get(s, 0) for s in ("queued", "sending", "deferred")
                    ),
                    "failed": counted.by_status.get("failed", 0),
                }
            )
    notice = {"deleted": "The campaign was deleted."}.get(request.query_params.get("notice", ""))
    return render(
        request,
        "campaigns.html",
        session=web,
        nav="campaigns",
        rows=rows,
        types=TYPE_LABELS,
        hints=TYPE_HINTS,
        notice=notice,
    )


# ------------------------------------------------------------------ create and edit


def _form_page(
    request: Request,
    context: AppContext,
    web: WebSession,
    campaign_type: CampaignType,
    form: Form,
    *,
    campaign: Campaign | None = None,
    preview: Preview | None = None,
    status: int = 200,
) -> Response:
    with context.database.session() as session:
        segment_choices = _segment_choices(session, web)
    return render(
        request,
        "campaign_form.html",
        session=web,
        status=status,
        nav="campaigns",
        form=form,
        kind=campaign_type.value,
        type_label=campaign_type.label,
        campaign=campaign,
        action=f"/campaigns/{campaign.id}/edit"
        if campaign
        else f"/campaigns/new?type={campaign_type.value}",
        segment_choices=segment_choices,
        audience_choices={"all": "Everyone in the workspace", **segment_choices},
        frequencies=FREQUENCY_CHOICES,
        preview=preview,
    )


def _preview(session: Session, web: WebSession, form: Form) -> Preview | None:
    """The message as typed, rendered for the chosen person; None (an error on the person
    field) when there is no such person."""
    person_id = form.text("preview_person")
    if not person_id:
        form.errors["preview_person"] = "Enter the id of a person to preview the message for."
        return None
    try:
        person = people.get_person(session, web.caller, person_id)
    except NotFound:
        form.errors["preview_person"] = f"There is no person with id “{person_id}” here."
        return None
    message = {name: (_multiline(form, name) or None) for name in MESSAGE_FIELDS}
    message["from"] = message["from"] or ""
    message["subject"] = message["subject"] or ""
    try:
        template = templating.compile_message(message)
    except templating.TemplateSyntaxError as error:
        return Preview(
            person_id,
            None,
            f"The {error.field} field does not parse: line {error.line}, column "
            f"{error.column}: {error.reason}.",
        )
    variables = {
        "customer": fanout.customer(person),
        "unsubscribe_url": PREVIEW_URL,
        "event": {},
        "trigger": {},
    }
    try:
        return Preview(person_id, template.render(variables), None)
    except templating.RenderError as error:
        return Preview(
            person_id,
            None,
            f"The {error.field} field cannot be rendered for this person: {error.reason}.",
        )


def _type_of(request: Request) -> CampaignType | None:
    kind = request.query_params.get("type", "")
    return CampaignType(kind) if kind in TYPE_LABELS else None


@router.get("/campaigns/new")
def new_page(request: Request, web: CurrentSession, context: Context) -> Response:
    campaign_type = _type_of(request)
    if campaign_type is None:
        return render(
            request,
            "campaign_types.html",
            session=web,
            nav="campaigns",
            types=TYPE_LABELS,
            hints=TYPE_HINTS,
        )
    values = {"frequency": Frequency.EVERY.value, "audience": "all"}
    return _form_page(request, context, web, campaign_type, Form(values))


@router.post("/campaigns/new")
def create(request: Request, web: CurrentSession, form: CheckedForm, context: Context) -> Response:
    campaign_type = _type_of(request)
    if campaign_type is None:
        raise NotFound("No such campaign type.")
    if form.get("action") == "preview":
        checked = Form(form)
        with context.database.session() as session:
            preview = _preview(session, web, checked)
        return _form_page(request, context, web, campaign_type, checked, preview=preview)
    with context.database.session() as session:
        segment_ids = {int(i) for i in _segment_choices(session, web)}
    checked, settings = campaign_form(form, campaign_type, segment_ids)
    if settings is None:
        return _form_page(request, context, web, campaign_type, checked, status=422)
    try:
        with context.database.session() as session:
            campaign = campaigns.create_campaign(
                session, context.runtime, web.caller, CampaignSpec(type=campaign_type, **settings)
            )
            session.flush()
            campaign_id = campaign.id
    except ServiceError as refused:
        _place(checked, refused)
        return _form_page(request, context, web, campaign_type, checked, status=refused.status)
    return see_other(f"/campaigns/{campaign_id}?notice=created")


@router.get("/campaigns/{campaign_id}/edit")
def edit_page(
    campaign_id: RowId, request: Request, web: CurrentSession, context: Context
) -> Response:
    with context.database.session() as session:
        campaign = campaigns.get_campaign(session, web.caller, campaign_id)
        values = values_of(campaign)
    return _form_page(
        request, context, web, CampaignType(campaign.type), Form(values), campaign=campaign
    )


@router.post("/campaigns/{campaign_id}/edit")
def edit(
    campaign_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    with context.database.session() as session:
        campaign = campaigns.get_campaign(session, web.caller, campaign_id)
        segment_ids = {int(i) for i in _segment_choices(session, web)}
        session.expunge(campaign)
    campaign_type = CampaignType(campaign.type)
    if form.get("action") == "preview":
        checked = Form(form)
        with context.database.session() as session:
            preview = _preview(session, web, checked)
        return _form_page(
            request, context, web, campaign_type, checked, campaign=campaign, preview=preview
        )
    checked, settings = campaign_form(form, campaign_type, segment_ids)
    if settings is None:
        return _form_page(
            request, context, web, campaign_type, checked, campaign=campaign, status=422
        )
    try:
        with context.database.session() as session:
            campaigns.update_campaign(session, context.runtime, web.caller, campaign_id, settings)
    except ServiceError as refused:
        if refused.status == 404:
            raise
        _place(checked, refused)
        return _form_page(
            request, context, web, campaign_type, checked, campaign=campaign, status=refused.status
        )
    return see_other(f"/campaigns/{campaign_id}?notice=saved")


# ------------------------------------------------------------------ a campaign


def _campaign_page(
    request: Request,
    context: AppContext,
    web: WebSession,
    campaign_id: int,
    *,
    trigger_form: Form | None = None,
    state_error: str | None = None,
    notice: str | None = None,
    status: int = 200,
) -> Response:
    with context.database.session() as session:
        campaign = campaigns.get_campaign(session, web.caller, campaign_id)
        counted = campaigns.counts(session, campaign)
        names = _server_names(session, web)
        segment_names = _segment_choices(session, web)
        route = _route(session, context, web, campaign.type)
        trigger = None
        trigger_id = request.query_params.get("trigger", "")
        if trigger_id.isascii() and trigger_id.isdigit() and int(trigger_id) < 2**31:
            try:
                trigger = campaigns.get_trigger(session, web.caller, campaign_id, int(trigger_id))
            except NotFound:
                trigger = None
        session.expunge_all()
    by_server = [
        {
            "id": server_id,
            "name": names.get(server_id, f"server #{server_id} (deleted)"),
            "count": count,
            "known": server_id in names,
        }
        for server_id, count in sorted(counted.by_server.items(), key=lambda item: -item[1])
    ]
    working = campaign.state in (State.SCHEDULED, State.SENDING) or (
        trigger is not None and trigger.state in ("pending", "running")
    )
    return render(
        request,
        "campaign.html",
        session=web,
        status=status,
        nav="campaigns",
        c=campaign,
        type_label=TYPE_LABELS.get(campaign.type, campaign.type),
        who=describe(campaign, segment_names),
        by_status=sorted(counted.by_status.items()),
        total=sum(counted.by_status.values()),
        by_server=by_server,
        route=route,
        trigger=trigger,
        trigger_form=trigger_form or Form({"data": "{}", "send_to": "audience"}),
        recipient_choices=RECIPIENT_CHOICES,
        state_error=state_error,
        notice=notice,
        refresh_seconds=2 if working else None,
    )


NOTICES = {
    "created": "Campaign created as a draft.",
    "saved": "Changes saved.",
    "active": "The campaign is active.",
    "paused": "The campaign is paused: it sends nothing until it is activated again.",
    "draft": "The campaign is back to draft.",
    "sending": "The newsletter is being sent: the counts below fill in as it goes out.",
    "scheduled": "The newsletter is scheduled: it goes out at the time below, to who is in "
    "its audience then. Until then you can still delete it.",
    "triggered": "Broadcast triggered: its messages are being queued.",
}


@router.get("/campaigns/{campaign_id}")
def campaign_page(
    campaign_id: RowId, request: Request, web: CurrentSession, context: Context
) -> Response:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return _campaign_page(request, context, web, campaign_id, notice=notice)


@router.post("/campaigns/{campaign_id}/state")
def change_state(
    campaign_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    state = form.get("state", "")
    if state not in {State.ACTIVE.value, State.PAUSED.value}:
        return _campaign_page(
            request,
            context,
            web,
            campaign_id,
            state_error="Choose to activate or pause.",
            status=422,
        )
    try:
        with context.database.session() as session:
            campaigns.update_campaign(
                session, context.runtime, web.caller, campaign_id, {"state": State(state)}
            )
    except ServiceError as refused:
        if refused.status == 404:
            raise
        return _campaign_page(
            request, context, web, campaign_id, state_error=refused.message, status=refused.status
        )
    return see_other(f"/campaigns/{campaign_id}?notice={state}")


# ------------------------------------------------------------------ sending


def _send_page(
    request: Request,
    context: AppContext,
    web: WebSession,
    campaign_id: int,
    *,
    form: Form | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    with context.database.session() as session:
        campaign = campaigns.get_campaign(session, web.caller, campaign_id)
        if campaign.type != CampaignType.NEWSLETTER:
            raise NotFound("Only newsletters are sent.")
        size, with_email = campaigns.audience_size(session, web.caller, campaign.audience or {})
        route = _route(session, context, web, campaign.type)
        who = describe(campaign, _segment_choices(session, web))
        session.expunge(campaign)
    return render(
        request,
        "campaign_send.html",
        session=web,
        status=status,
        nav="campaigns",
        c=campaign,
        who=who,
        size=size,
        with_email=with_email,
        route=route,
        form=form or Form({}),
        error=error,
    )


@router.get("/campaigns/{campaign_id}/send")
def send_page(
    campaign_id: RowId, request: Request, web: CurrentSession, context: Context
) -> Response:
    return _send_page(request, context, web, campaign_id)


@router.post("/campaigns/{campaign_id}/send")
def send(
    campaign_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    checked = Form(form)
    readable, send_at = _send_at(checked)
    if not readable:
        return _send_page(request, context, web, campaign_id, form=checked, status=422)
    try:
        with context.database.session() as session:
            campaigns.send_newsletter(session, context.runtime, web.caller, campaign_id, send_at)
    except ServiceError as refused:
        if refused.status == 404:
            raise
        return _send_page(
            request,
            context,
            web,
            campaign_id,
            form=checked,
            error=refused.message,
            status=refused.status,
        )
    return see_other(f"/campaigns/{campaign_id}?notice={'scheduled' if send_at else 'sending'}")


@router.post("/campaigns/{campaign_id}/trigger")
def trigger(
    campaign_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    checked = Form(form)
    wanted = trigger_request(checked)
    if wanted is None:
        return _campaign_page(request, context, web, campaign_id, trigger_form=checked, status=422)
    try:
        with context.database.session() as session:
            made = campaigns.create_trigger(
                session, context.runtime, web.caller, campaign_id, wanted
            )
            trigger_id = made.id
    except ServiceError as refused:
        if refused.status == 404:
            raise
        where = "data" if refused.code != "invalid_conditions" else "recipients_list"
        if refused.message.startswith("per_user_data"):
            where = "recipients_list"
        checked.errors[where] = refused.message
        return _campaign_page(
            request, context, web, campaign_id, trigger_form=checked, status=refused.status
        )
    return see_other(f"/campaigns/{campaign_id}?notice=triggered&trigger={trigger_id}")


# ------------------------------------------------------------------ deleting


def _delete_page(
    request: Request,
    web: WebSession,
    campaign: Campaign,
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    return delete_confirmation(
        request,
        web,
        section="campaigns",
        label="Campaigns",
        object_id=campaign.id,
        name=campaign.name,
        consequences=[
            "Its messages still waiting to be sent are cancelled; those already sent keep "
            "their record in the deliveries log.",
            "While a newsletter's send or a broadcast's trigger is queueing its messages, "
            "the campaign cannot be deleted: wait until it is done.",
        ],
        error=error,
        status=status,
    )


def _loaded(context: AppContext, web: WebSession, campaign_id: int) -> Campaign:
    with context.database.session() as session:
        campaign = campaigns.get_campaign(session, web.caller, campaign_id)
        session.expunge(campaign)
    return campaign


@router.get("/campaigns/{campaign_id}/delete")
def delete_page(
    campaign_id: RowId, request: Request, web: CurrentSession, context: Context
) -> Response:
    return _delete_page(request, web, _loaded(context, web, campaign_id))


@router.post("/campaigns/{campaign_id}/delete")
def delete(
    campaign_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    campaign = _loaded(context, web, campaign_id)
    try:
        with context.database.session() as session:
            campaigns.delete_campaign(session, context.runtime, web.caller, campaign_id)
    except ServiceError as refused:
        if refused.status == 404:
            raise
        return _delete_page(request, web, campaign, error=refused.message, status=refused.status)
    return see_other("/campaigns?notice=deleted")
