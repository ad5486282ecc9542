"""`/v1/campaigns`: the four campaign types, newsletter sends and broadcast triggers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Response
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StrictBool,
    TypeAdapter,
    model_validator,
)

from postyard.api.context import Context, CurrentCaller
from postyard.api.errors import error_response
from postyard.api.fields import (
    STRICT,
    EmailAddress,
    HeaderLine,
    Mailbox,
    Name,
    Patch,
    RowId,
    Text,
    UtcDateTime,
)
from postyard.api.people import PersonId, check_json
from postyard.api.segments import ConditionTree
from postyard.clock import isoformat
from postyard.db.models import BroadcastTrigger, Campaign
from postyard.routing import CampaignType
from postyard.services import campaigns
from postyard.services.campaigns import (
    CampaignSpec,
    Counts,
    Frequency,
    RateLimited,
    State,
    TriggerRequest,
    TriggerState,
)

router = APIRouter(prefix="/v1/campaigns", tags=["Campaigns"])

_MAILBOX = TypeAdapter(Mailbox)


def _address_template(value: str) -> str:
    """A `from` without Liquid must be an address now; with Liquid, it is checked per person."""
    if "{{" in value or "{%" in value:
        return value
    return _MAILBOX.validate_python(value)


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    check_json(value)
    return value


AddressTemplate = Annotated[HeaderLine, AfterValidator(_address_template)]
# Stored as JSON and read back by conditions and templates: no NaN, no NUL, bounded nesting.
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
# Customer.io takes ids as strings or numbers; people are stored under the string.
RecipientId = Annotated[
    PersonId, BeforeValidator(lambda value: str(value) if type(value) is int else value)
]


class MessageIn(BaseModel):
    model_config = STRICT

    from_: AddressTemplate = Field(alias="from")
    reply_to: AddressTemplate | None = None
    subject: HeaderLine
    text: Text | None = None
    html: Text | None = None

    def fields(self) -> dict[str, str | None]:
        return {
            "from": self.from_,
            "reply_to": self.reply_to,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
        }


class MessagePatch(Patch):
    """Only the fields sent change; `null` removes reply_to, text or html."""

    NULLABLE = frozenset(["html", "reply_to", "text"])

    from_: AddressTemplate | None = Field(default=None, alias="from")
    reply_to: AddressTemplate | None = None
    subject: HeaderLine | None = None
    text: Text | None = None
    html: Text | None = None

    def changes(self) -> dict[str, str | None]:
        return {name.rstrip("_"): getattr(self, name) for name in self.model_fields_set}


class TriggerIn(BaseModel):
    """`segment_id` for segment-triggered campaigns; `event_name` and `filter` for
    event-triggered ones, the filter being a condition tree over the event's data."""

    model_config = STRICT

    segment_id: RowId | None = None
    event_name: Name | None = None
    filter: ConditionTree | None = None


class AudienceIn(BaseModel):
    model_config = STRICT

    segment_id: RowId | None = None
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> AudienceIn:
        if (self.segment_id is None) == (self.all is None):
            raise ValueError('audience is either {"segment_id": …} or {"all": true}')
        return self

    def stored(self) -> dict[str, Any]:
        return {"segment_id": self.segment_id} if self.segment_id is not None else {"all": True}


SettableState = Literal["draft", "active", "paused"]


class CampaignCreate(BaseModel):
    model_config = STRICT

    name: Name
    type: CampaignType
    message: MessageIn
    trigger: TriggerIn | None = None
    audience: AudienceIn | None = None
    re_entry: StrictBool | None = None
    include_existing: StrictBool | None = None
    frequency: Frequency | None = None
    state: SettableState = "draft"

    def spec(self) -> CampaignSpec:
        return CampaignSpec(
            name=self.name,
            type=self.type,
            message=self.message.fields(),
            trigger=self.trigger.model_dump(exclude_none=True) if self.trigger else None,
            audience=self.audience.stored() if self.audience else None,
            re_entry=self.re_entry,
            include_existing=self.include_existing,
            frequency=self.frequency,
            state=State(self.state),
        )


class CampaignPatch(Patch):
    """Only the fields sent change; `message` changes field by field."""

    NULLABLE = frozenset(["audience", "frequency", "include_existing", "re_entry", "trigger"])

    name: Name | None = None
    type: CampaignType | None = None
    message: MessagePatch | None = None
    trigger: TriggerIn | None = None
    audience: AudienceIn | None = None
    re_entry: StrictBool | None = None
    include_existing: StrictBool | None = None
    frequency: Frequency | None = None
    state: SettableState | None = None

    def changes(self) -> dict[str, Any]:
        changes: dict[str, Any] = {name: getattr(self, name) for name in self.model_fields_set}
        if self.message is not None:
            changes["message"] = self.message.changes()
        if "trigger" in changes and self.trigger is not None:
            changes["trigger"] = self.trigger.model_dump(exclude_none=True)
        if "audience" in changes and self.audience is not None:
            changes["audience"] = self.audience.stored()
        if self.state is not None:
            changes["state"] = State(self.state)
        return changes


class SendBody(BaseModel):
    model_config = STRICT

    send_at: UtcDateTime | None = None


class PerUserData(BaseModel):
    model_config = STRICT

    id: RecipientId | None = None
    email: EmailAddress | None = None
    data: JsonObject = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exactly_one(self) -> PerUserData:
        if (self.id is None) == (self.email is None):
            raise ValueError("each entry names its person by exactly one of id or email")
        return self


class TriggerBody(BaseModel):
    """`data` fills `trigger.*`; at most one of recipients, ids, emails, per_user_data chooses
    whom it goes to (none: the broadcast's own audience)."""

    model_config = STRICT

    data: JsonObject = Field(default_factory=dict)
    recipients: ConditionTree | None = None
    ids: list[RecipientId] | None = Field(default=None, min_length=1)
    emails: list[EmailAddress] | None = Field(default=None, min_length=1)
    per_user_data: list[PerUserData] | None = Field(default=None, min_length=1)
    id_ignore_missing: StrictBool = False
    email_ignore_missing: StrictBool = False

    @model_validator(mode="after")
    def _one_recipient_form(self) -> TriggerBody:
        forms = [
            name
            for name in ("recipients", "ids", "emails", "per_user_data")
            if getattr(self, name) is not None
        ]
        if len(forms) > 1:
            raise ValueError(
                "give at most one of recipients, ids, emails, per_user_data "
                f"(got {', '.join(forms)})"
            )
        return self

    def request(self) -> TriggerRequest:
        return TriggerRequest(
            data=self.data,
            recipients=self.recipients,
            ids=self.ids,
            emails=self.emails,
            per_user_data=(
                [entry.model_dump(exclude_none=True) for entry in self.per_user_data]
                if self.per_user_data is not None
                else None
            ),
            id_ignore_missing=self.id_ignore_missing,
            email_ignore_missing=self.email_ignore_missing,
        )


class MessageOut(BaseModel):
    from_: str = Field(serialization_alias="from")
    reply_to: str | None
    subject: str
    text: str | None
    html: str | None


class CountsOut(BaseModel):
    by_status: dict[str, int]
    by_server: dict[str, int]


class CampaignOut(BaseModel):
    id: int
    name: str
    type: CampaignType
    state: State
    message: MessageOut
    trigger: dict[str, Any] | None
    audience: dict[str, Any] | None
    re_entry: bool | None
    include_existing: bool | None
    frequency: Frequency | None
    send_at: str | None
    sent_at: str | None
    created_at: str | None
    updated_at: str | None
    counts: CountsOut | None = None

    @classmethod
    def of(cls, campaign: Campaign, counts: Counts | None = None) -> CampaignOut:
        spec = campaigns.spec_of(campaign)
        message = campaign.message
        return cls(
            id=campaign.id,
            name=campaign.name,
            type=spec.type,
            state=spec.state,
            message=MessageOut(
                from_=message["from"],
                reply_to=message.get("reply_to"),
                subject=message["subject"],
                text=message.get("text"),
                html=message.get("html"),
            ),
            trigger=campaign.trigger,
            audience=campaign.audience,
            re_entry=spec.re_entry,
            include_existing=spec.include_existing,
            frequency=spec.frequency,
            send_at=isoformat(campaign.send_at),
            sent_at=isoformat(campaign.sent_at),
            created_at=isoformat(campaign.created_at),
            updated_at=isoformat(campaign.updated_at),
            counts=CountsOut(by_status=counts.by_status, by_server=counts.by_server)
            if counts
            else None,
        )


class CampaignList(BaseModel):
    data: list[CampaignOut]


class TriggerCreated(BaseModel):
    trigger_id: int


class RecipientError(BaseModel):
    recipient: str
    error: str


class TriggerOut(BaseModel):
    id: int
    campaign_id: int
    state: TriggerState
    counts: dict[str, int]
    errors: list[RecipientError]
    created_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, trigger: BroadcastTrigger) -> TriggerOut:
        return cls(
            id=trigger.id,
            campaign_id=trigger.campaign_id,
            state=TriggerState(trigger.state),
            counts=trigger.counts,
            errors=[RecipientError(**error) for error in trigger.errors],
            created_at=isoformat(trigger.created_at),
            finished_at=isoformat(trigger.finished_at),
        )


@router.post("", status_code=201, response_model_by_alias=True)
def create_campaign(body: CampaignCreate, caller: CurrentCaller, context: Context) -> CampaignOut:
    with context.database.session() as session:
        campaign = campaigns.create_campaign(session, context.runtime, caller, body.spec())
        return CampaignOut.of(campaign, campaigns.counts(session, campaign))


@router.get("", response_model_by_alias=True)
def list_campaigns(
    caller: CurrentCaller, context: Context, type: CampaignType | None = None
) -> CampaignList:
    with context.database.session() as session:
        return CampaignList(
            data=[CampaignOut.of(c) for c in campaigns.list_campaigns(session, caller, type)]
        )


@router.get("/{campaign_id}", response_model_by_alias=True)
def get_campaign(campaign_id: RowId, caller: CurrentCaller, context: Context) -> CampaignOut:
    with context.database.session() as session:
        campaign = campaigns.get_campaign(session, caller, campaign_id)
        return CampaignOut.of(campaign, campaigns.counts(session, campaign))


@router.patch("/{campaign_id}", response_model_by_alias=True)
def update_campaign(
    campaign_id: RowId, body: CampaignPatch, caller: CurrentCaller, context: Context
) -> CampaignOut:
    with context.database.session() as session:
        campaign = campaigns.update_campaign(
            session, context.runtime, caller, campaign_id, body.changes()
        )
        return CampaignOut.of(campaign, campaigns.counts(session, campaign))


@router.delete("/{campaign_id}", status_code=204)
def delete_campaign(campaign_id: RowId, caller: CurrentCaller, context: Context) -> Response:
    """Delete a campaign; its deliveries stay as history, its waiting messages are cancelled.
    409 `campaign_sending` while a newsletter's send or a broadcast's trigger is queueing."""
    with context.database.session() as session:
        campaigns.delete_campaign(session, context.runtime, caller, campaign_id)
    return Response(status_code=204)


@router.post("/{campaign_id}/send", status_code=202, response_model_by_alias=True)
def send_newsletter(
    campaign_id: RowId,
    caller: CurrentCaller,
    context: Context,
    body: Annotated[SendBody | None, Body()] = None,
) -> CampaignOut:
    """Send a newsletter now, or at `send_at`; it goes to its audience as it is then."""
    send_at = body.send_at if body else None
    with context.database.session() as session:
        campaign = campaigns.send_newsletter(session, context.runtime, caller, campaign_id, send_at)
        return CampaignOut.of(campaign)


@router.post("/{campaign_id}/triggers", status_code=202, response_model=TriggerCreated)
def trigger_broadcast(
    campaign_id: RowId, body: TriggerBody, caller: CurrentCaller, context: Context
) -> TriggerCreated | JSONResponse:
    try:
        with context.database.session() as session:
            trigger = campaigns.create_trigger(
                session, context.runtime, caller, campaign_id, body.request()
            )
            return TriggerCreated(trigger_id=trigger.id)
    except RateLimited as limited:
        return error_response(
            limited.status,
            limited.code,
            limited.message,
            **{"Retry-After": str(limited.retry_after)},
        )


@router.get("/{campaign_id}/triggers/{trigger_id}")
def get_trigger(
    campaign_id: RowId, trigger_id: RowId, caller: CurrentCaller, context: Context
) -> TriggerOut:
    with context.database.session() as session:
        return TriggerOut.of(campaigns.get_trigger(session, caller, campaign_id, trigger_id))
