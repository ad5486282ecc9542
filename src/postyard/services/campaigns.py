"""Campaigns of the four types: settings checked per type, states, newsletter sends and
broadcast triggers.

A campaign is saved only whole and valid: its templates parse, its segment is
in the workspace, its settings fit its type. Sending is not done here: a
newsletter's send and a broadcast's trigger are recorded for `jobs` to stream
to the outbox, and the triggered types are started by `triggers`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from postyard import templating
from postyard.conditions import ConditionError, parse
from postyard.db.models import (
    BroadcastTrigger,
    Campaign,
    Delivery,
    Person,
    Segment,
    SegmentMember,
)
from postyard.delivery.policy import CLAIMABLE, Status
from postyard.routing import CampaignType
from postyard.services import audit, fanout
from postyard.services.audit import Action, ObjectType
from postyard.services.errors import Conflict, InvalidInput, NotFound, ServiceError
from postyard.services.runtime import Runtime
from postyard.services.workspaces import Caller

TRIGGER_INTERVAL = timedelta(seconds=10)


class State(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    # A newsletter's send: scheduled by the API, then sending and sent by `jobs`.
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"


SETTABLE_STATES = (State.DRAFT, State.ACTIVE, State.PAUSED)


class Frequency(StrEnum):
    EVERY = "every"
    ONCE = "once"


class TriggerState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class RateLimited(ServiceError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class CampaignSpec:
    """What a user sets on a campaign; options that do not apply to its type stay None."""

    name: str
    type: CampaignType
    message: Mapping[str, str | None]
    trigger: Mapping[str, Any] | None = None
    audience: Mapping[str, Any] | None = None
    re_entry: bool | None = None
    include_existing: bool | None = None
    frequency: Frequency | None = None
    state: State = State.DRAFT


@dataclass(frozen=True)
class TriggerRequest:
    """A broadcast trigger: `data` for `trigger.*`, and at most one way to name recipients."""

    data: Mapping[str, Any] = field(default_factory=dict)
    recipients: Mapping[str, Any] | None = None
    ids: list[str] | None = None
    emails: list[str] | None = None
    per_user_data: list[dict[str, Any]] | None = None
    id_ignore_missing: bool = False
    email_ignore_missing: bool = False


@dataclass(frozen=True)
class Counts:
    by_status: dict[str, int]
    by_server: dict[str, int]


_OPTIONS = {
    CampaignType.SEGMENT_TRIGGERED: {"re_entry", "include_existing"},
    CampaignType.EVENT_TRIGGERED: {"frequency"},
    CampaignType.NEWSLETTER: set(),
    CampaignType.TRIGGERED_BROADCAST: set(),
}
_TRIGGER_KEYS = {
    CampaignType.SEGMENT_TRIGGERED: ({"segment_id"}, set()),
    CampaignType.EVENT_TRIGGERED: ({"event_name"}, {"filter"}),
}
_HAS_AUDIENCE = {CampaignType.NEWSLETTER, CampaignType.TRIGGERED_BROADCAST}
_DEFAULT_AUDIENCE = {CampaignType.TRIGGERED_BROADCAST: {"all": True}}


def list_campaigns(
    session: Session, caller: Caller, campaign_type: CampaignType | None = None
) -> list[Campaign]:
    query = select(Campaign).where(Campaign.workspace_id == caller.workspace_id)
    if campaign_type is not None:
        query = query.where(Campaign.type == campaign_type.value)
    return list(session.scalars(query.order_by(Campaign.id)))


def get_campaign(session: Session, caller: Caller, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.workspace_id != caller.workspace_id:
        raise NotFound(f"No campaign with id {campaign_id} in this workspace.")
    return campaign


def create_campaign(
    session: Session, runtime: Runtime, caller: Caller, spec: CampaignSpec
) -> Campaign:
    if spec.type == CampaignType.NEWSLETTER and spec.state != State.DRAFT:
        raise InvalidInput(
            "A newsletter is created as a draft and sent with POST /v1/campaigns/{id}/send.",
            code="invalid_state",
        )
    if spec.state not in SETTABLE_STATES:
        raise InvalidInput(f"state must be one of {', '.join(SETTABLE_STATES)}.")
    spec = _checked(session, caller, spec)
    now = runtime.clock()
    campaign = Campaign(
        workspace_id=caller.workspace_id,
        name=spec.name,
        type=spec.type.value,
        state=spec.state.value,
        created_at=now,
    )
    _store(campaign, spec, now)
    session.add(campaign)
    session.flush()
    audit.record(
        session,
        caller.actor,
        Action.CREATE,
        ObjectType.CAMPAIGN,
        campaign.id,
        None,
        audit.snapshot(campaign),
    )
    if spec.state == State.ACTIVE:
        _on_activation(session, runtime, campaign)
    return campaign


def update_campaign(
    session: Session,
    runtime: Runtime,
    caller: Caller,
    campaign_id: int,
    changes: Mapping[str, Any],
) -> Campaign:
    """Apply the fields present in `changes` (`message` key by key); the result must be a
    valid campaign as a whole, or nothing changes."""
    campaign = _locked(session, caller, campaign_id)
    before = audit.snapshot(campaign)
    current = spec_of(campaign)
    if "type" in changes and changes["type"] != current.type:
        raise InvalidInput("A campaign's type cannot be changed; create a new campaign.")
    if current.type == CampaignType.NEWSLETTER:
        if campaign.state in (State.SENDING, State.SENT):
            raise Conflict(
                f"Newsletter {campaign.id} has been sent; it can no longer be changed.",
                code="already_sent",
            )
        if "state" in changes:
            raise InvalidInput(
                "A newsletter's state follows its send: send it with POST /v1/campaigns/{id}/send.",
                code="invalid_state",
            )
    elif "state" in changes and changes["state"] not in SETTABLE_STATES:
        raise InvalidInput(f"state must be one of {', '.join(SETTABLE_STATES)}.")
    fields = {key: value for key, value in changes.items() if key not in {"message", "type"}}
    message = {**current.message, **changes.get("message", {})}
    spec = _checked(session, caller, replace(current, **fields, message=message))
    was_active = campaign.state == State.ACTIVE
    now = runtime.clock()
    _store(campaign, spec, now)
    if current.type != CampaignType.NEWSLETTER:
        campaign.state = State(spec.state).value
    session.flush()
    after = audit.snapshot(campaign)
    action = Action.STATE_CHANGE if after["state"] != before["state"] else Action.UPDATE
    audit.record(session, caller.actor, action, ObjectType.CAMPAIGN, campaign.id, before, after)
    if campaign.state == State.ACTIVE and not was_active:
        _on_activation(session, runtime, campaign)
    return campaign


def spec_of(campaign: Campaign) -> CampaignSpec:
    """A stored campaign as the settings a user would send to create it."""
    campaign_type = CampaignType(campaign.type)
    options = campaign.options or {}
    frequency = options.get("frequency")
    return CampaignSpec(
        name=campaign.name,
        type=campaign_type,
        message=dict(campaign.message),
        trigger=campaign.trigger,
        audience=campaign.audience,
        re_entry=options.get("re_entry"),
        include_existing=options.get("include_existing"),
        frequency=Frequency(frequency) if frequency else None,
        state=State(campaign.state),
    )


def send_newsletter(
    session: Session, runtime: Runtime, caller: Caller, campaign_id: int, send_at: datetime | None
) -> Campaign:
    """Schedule a newsletter's one send, now or at `send_at`; `jobs` streams it when due.

    The audience is read when the send runs, so it is who is in it at send time.
    """
    campaign = _locked(session, caller, campaign_id)
    if campaign.type != CampaignType.NEWSLETTER:
        raise Conflict(
            f"Campaign {campaign.id} is a {campaign.type} campaign; only newsletters are sent "
            "with /send.",
            code="wrong_campaign_type",
        )
    if campaign.state != State.DRAFT:
        when = campaign.sent_at or campaign.send_at
        raise Conflict(
            f"Newsletter {campaign.id} is already {campaign.state}"
            f"{f' ({when.isoformat()} UTC)' if when else ''}; a newsletter is sent once.",
            code="already_sent",
        )
    _check_audience(session, caller, campaign.audience or {})
    before = audit.snapshot(campaign)
    now = runtime.clock()
    campaign.state = State.SCHEDULED.value
    campaign.send_at = max(send_at, now) if send_at is not None else now
    audit.record(
        session,
        caller.actor,
        Action.SEND,
        ObjectType.CAMPAIGN,
        campaign.id,
        before,
        audit.snapshot(campaign),
    )
    return campaign


def create_trigger(
    session: Session, runtime: Runtime, caller: Caller, campaign_id: int, request: TriggerRequest
) -> BroadcastTrigger:
    """Record a broadcast trigger for `jobs`; at most one per broadcast per 10 seconds."""
    campaign = _locked(session, caller, campaign_id)
    if campaign.type != CampaignType.TRIGGERED_BROADCAST:
        raise Conflict(
            f"Campaign {campaign.id} is a {campaign.type} campaign; only triggered broadcasts "
            "take triggers.",
            code="wrong_campaign_type",
        )
    if campaign.state != State.ACTIVE:
        raise Conflict(
            f"Broadcast {campaign.id} is {campaign.state}; activate it "
            '(PATCH {"state": "active"}) before triggering it.',
            code="campaign_not_active",
        )
    stored = _stored_request(request)
    now = runtime.clock()
    latest = session.scalar(
        select(func.max(BroadcastTrigger.created_at)).where(
            BroadcastTrigger.campaign_id == campaign.id
        )
    )
    if latest is not None and now - latest < TRIGGER_INTERVAL:
        wait = (latest + TRIGGER_INTERVAL - now).total_seconds()
        raise RateLimited(
            f"Broadcast {campaign.id} was triggered less than "
            f"{TRIGGER_INTERVAL.seconds} seconds ago; try again in {math.ceil(wait)} s.",
            retry_after=max(1, math.ceil(wait)),
        )
    trigger = BroadcastTrigger(
        workspace_id=caller.workspace_id,
        campaign_id=campaign.id,
        request=stored,
        state=TriggerState.PENDING.value,
        counts={},
        errors=[],
        created_at=now,
    )
    session.add(trigger)
    session.flush()
    audit.record(
        session,
        caller.actor,
        Action.TRIGGER,
        ObjectType.CAMPAIGN,
        campaign.id,
        None,
        {"trigger_id": trigger.id},
    )
    return trigger


def get_trigger(
    session: Session, caller: Caller, campaign_id: int, trigger_id: int
) -> BroadcastTrigger:
    campaign = get_campaign(session, caller, campaign_id)
    trigger = session.get(BroadcastTrigger, trigger_id)
    if trigger is None or trigger.campaign_id != campaign.id:
        raise NotFound(f"No trigger with id {trigger_id} for campaign {campaign.id}.")
    return trigger


CAMPAIGN_DELETED = "campaign deleted before this message was sent"


def delete_campaign(session: Session, runtime: Runtime, caller: Caller, campaign_id: int) -> None:
    """Delete a campaign; its deliveries stay, as the history of what it sent.

    Refused (409 `campaign_sending`) while its mail is being queued, a newsletter's send
    or a broadcast's trigger under way, which would go on queueing for a campaign that
    no longer exists: wait for it to finish. Its messages still waiting (queued or
    deferred) are cancelled with the reason; those being handed to a server are past
    recall. A scheduled newsletter that has not started is simply never sent.
    """
    campaign = _locked(session, caller, campaign_id)
    running = session.scalar(
        select(func.count()).where(
            BroadcastTrigger.campaign_id == campaign.id,
            BroadcastTrigger.state.in_([TriggerState.PENDING.value, TriggerState.RUNNING.value]),
        )
    )
    if campaign.state == State.SENDING or running:
        raise Conflict(
            f"Campaign {campaign.id} is queueing its mail now; delete it once that is done.",
            code="campaign_sending",
        )
    session.execute(
        update(Delivery)
        .where(Delivery.campaign_id == campaign.id, Delivery.status.in_(CLAIMABLE))
        .values(status=Status.CANCELLED, last_error=CAMPAIGN_DELETED, updated_at=runtime.clock())
    )
    audit.record(
        session,
        caller.actor,
        Action.DELETE,
        ObjectType.CAMPAIGN,
        campaign.id,
        audit.snapshot(campaign),
        None,
    )
    session.delete(campaign)


def counts(session: Session, campaign: Campaign) -> Counts:
    """The campaign's deliveries by state, and by the SMTP server that took them."""
    by_status = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.campaign_id == campaign.id)
        .group_by(Delivery.status)
    )
    by_server = session.execute(
        select(Delivery.smtp_server_id, func.count())
        .where(Delivery.campaign_id == campaign.id, Delivery.smtp_server_id.is_not(None))
        .group_by(Delivery.smtp_server_id)
    )
    return Counts(
        by_status={status: count for status, count in by_status},
        by_server={str(server_id): count for server_id, count in by_server},
    )


def _locked(session: Session, caller: Caller, campaign_id: int) -> Campaign:
    """Load a campaign for a change, holding its row so that concurrent changes serialise
    (a no-op update locks the row on PostgreSQL and the database on SQLite)."""
    locked = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.workspace_id == caller.workspace_id)
        .values(name=Campaign.name)
        .execution_options(synchronize_session=False)
    )
    if locked.rowcount == 0:
        raise NotFound(f"No campaign with id {campaign_id} in this workspace.")
    campaign = session.get_one(Campaign, campaign_id)
    session.refresh(campaign)
    return campaign


def _store(campaign: Campaign, spec: CampaignSpec, now: datetime) -> None:
    campaign.name = spec.name
    campaign.message = dict(spec.message)
    campaign.trigger = dict(spec.trigger) if spec.trigger is not None else None
    campaign.audience = dict(spec.audience) if spec.audience is not None else None
    options = {
        "re_entry": spec.re_entry,
        "include_existing": spec.include_existing,
        "frequency": spec.frequency.value if spec.frequency else None,
    }
    campaign.options = {key: value for key, value in options.items() if value is not None}
    campaign.updated_at = now


def _checked(session: Session, caller: Caller, spec: CampaignSpec) -> CampaignSpec:
    """The spec with its type's defaults filled in, or InvalidInput saying what does not fit."""
    _check_message(spec.message)
    allowed = _OPTIONS[spec.type]
    for option in ("re_entry", "include_existing", "frequency"):
        if option not in allowed and getattr(spec, option) is not None:
            raise InvalidInput(f"{option} does not apply to {spec.type.value} campaigns.")
    defaults: dict[str, Any] = {}
    if spec.type == CampaignType.SEGMENT_TRIGGERED:
        defaults = {
            "re_entry": bool(spec.re_entry),
            "include_existing": bool(spec.include_existing),
        }
    elif spec.type == CampaignType.EVENT_TRIGGERED:
        defaults = {"frequency": spec.frequency or Frequency.EVERY}
    trigger = _checked_trigger(session, caller, spec.type, spec.trigger)
    audience = spec.audience
    if spec.type in _HAS_AUDIENCE:
        audience = audience if audience is not None else _DEFAULT_AUDIENCE.get(spec.type)
        if audience is None:
            raise InvalidInput(
                f'{spec.type.value} campaigns need an audience: {{"segment_id": …}} '
                'or {"all": true}.'
            )
        _check_audience(session, caller, audience)
    elif audience is not None:
        raise InvalidInput(f"audience does not apply to {spec.type.value} campaigns.")
    return replace(spec, trigger=trigger, audience=audience, **defaults)


def _check_message(message: Mapping[str, str | None]) -> None:
    for required in ("from", "subject"):
        if not message.get(required):
            raise InvalidInput(f"message.{required} is required.")
    if message.get("text") is None and message.get("html") is None:
        raise InvalidInput("message needs a body: text, html or both.")
    try:
        templating.compile_message(message)
    except templating.TemplateSyntaxError as error:
        raise InvalidInput(str(error), code="template_syntax") from None


def _checked_trigger(
    session: Session,
    caller: Caller,
    campaign_type: CampaignType,
    trigger: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    if campaign_type not in _TRIGGER_KEYS:
        if trigger is not None:
            raise InvalidInput(
                f"trigger does not apply to {campaign_type.value} campaigns"
                + (
                    "; a triggered broadcast is triggered with POST /v1/campaigns/{id}/triggers."
                    if campaign_type == CampaignType.TRIGGERED_BROADCAST
                    else "."
                )
            )
        return None
    required, optional = _TRIGGER_KEYS[campaign_type]
    given = {key for key, value in (trigger or {}).items() if value is not None}
    if trigger is None or not required <= given:
        raise InvalidInput(
            f"{campaign_type.value} campaigns need trigger.{', trigger.'.join(sorted(required))}."
        )
    unknown = sorted(given - required - optional)
    if unknown:
        raise InvalidInput(
            f"trigger.{unknown[0]} does not apply to {campaign_type.value} campaigns."
        )
    checked = {key: trigger[key] for key in sorted(given)}
    if "segment_id" in checked:
        _check_segment(session, caller, checked["segment_id"], "trigger.segment_id")
    if "filter" in checked:
        try:
            parse(checked["filter"], allow_events=False)
        except ConditionError as error:
            raise InvalidInput(f"trigger.filter: {error}", code="invalid_conditions") from None
    return checked


def _check_audience(session: Session, caller: Caller, audience: Mapping[str, Any]) -> None:
    if "segment_id" in audience:
        _check_segment(session, caller, audience["segment_id"], "audience.segment_id")
    elif audience.get("all") is not True:
        raise InvalidInput('audience is {"segment_id": …} or {"all": true}.')


def _check_segment(session: Session, caller: Caller, segment_id: int, where: str) -> None:
    segment = session.get(Segment, segment_id)
    if segment is None or segment.workspace_id != caller.workspace_id:
        raise InvalidInput(
            f"{where}: there is no segment with id {segment_id} in this workspace.",
            code="unknown_segment",
        )


def _on_activation(session: Session, runtime: Runtime, campaign: Campaign) -> None:
    """A segment-triggered campaign with `include_existing` writes to the segment's current
    members when it is activated, each of them once, batch by batch."""
    options = campaign.options or {}
    if campaign.type != CampaignType.SEGMENT_TRIGGERED or not options.get("include_existing"):
        return
    composer = fanout.Composer.of(campaign, runtime)
    audience = {"segment_id": campaign.trigger["segment_id"]}
    after = 0
    while people := fanout.people_after(
        session, campaign.workspace_id, audience, after, fanout.BATCH_SIZE
    ):
        sent = fanout.already_sent(session, campaign.id, [person.person_id for person in people])
        letters = [composer.letter(person) for person in people if person.person_id not in sent]
        fanout.enqueue(session, runtime, campaign.workspace_id, letters)
        after = people[-1].id


def _stored_request(request: TriggerRequest) -> dict[str, Any]:
    """The trigger as `jobs` reads it back, ids and emails each once, in the order given."""
    stored: dict[str, Any] = {
        "data": dict(request.data),
        "id_ignore_missing": request.id_ignore_missing,
        "email_ignore_missing": request.email_ignore_missing,
    }
    if request.recipients is not None:
        try:
            parse(request.recipients)
        except ConditionError as error:
            raise InvalidInput(f"recipients: {error}", code="invalid_conditions") from None
        stored["recipients"] = dict(request.recipients)
    if request.ids is not None:
        stored["ids"] = list(dict.fromkeys(request.ids))
    if request.emails is not None:
        stored["emails"] = list({email.lower(): email for email in request.emails}.values())
    if request.per_user_data is not None:
        _check_per_user_data(request.per_user_data)
        stored["per_user_data"] = request.per_user_data
    return stored


def _check_per_user_data(entries: list[dict[str, Any]]) -> None:
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries):
        key = ("id", entry["id"]) if entry.get("id") is not None else ("email", entry["email"])
        folded = (key[0], key[1].lower() if key[0] == "email" else key[1])
        if folded in seen:
            raise InvalidInput(
                f"per_user_data[{index}]: {key[0]} '{key[1]}' appears more than once."
            )
        seen.add(folded)


def audience_size(session: Session, caller: Caller, audience: Mapping[str, Any]) -> tuple[int, int]:
    """How many people an audience holds now, and how many of them have an email address."""
    query = select(func.count(), func.count(Person.email)).where(
        Person.workspace_id == caller.workspace_id
    )
    if "segment_id" in audience:
        query = query.join(SegmentMember, SegmentMember.person_pk == Person.id).where(
            SegmentMember.segment_id == audience["segment_id"]
        )
    people_count, with_email = session.execute(query).one()
    return int(people_count), int(with_email)
