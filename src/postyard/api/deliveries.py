"""`/v1/test_messages` queues a message as a campaign type would; `/v1/deliveries` tells
what became of every message."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from postyard.api.context import Context, CurrentCaller
from postyard.api.fields import STRICT, EmailAddress, HeaderLine, Mailbox, RowId, Text
from postyard.clock import isoformat
from postyard.db.models import Delivery, DeliveryAttempt
from postyard.delivery.outbox import Letter
from postyard.delivery.policy import Status
from postyard.routing import CampaignType
from postyard.services import deliveries
from postyard.services.deliveries import DeliveryFilter
from postyard.services.route_reasons import RouteReasons

router = APIRouter(tags=["Deliveries"])


class TestMessage(BaseModel):
    model_config = STRICT

    campaign_type: CampaignType
    to: EmailAddress
    from_: Mailbox = Field(alias="from")
    reply_to: Mailbox | None = None
    subject: HeaderLine
    text: Text
    html: Text | None = None


class DeliveryOut(BaseModel):
    id: int
    campaign_type: CampaignType
    campaign_id: int | None
    person_id: str | None
    to: str
    from_: str = Field(serialization_alias="from")
    subject: str
    status: Status
    smtp_server_id: int | None
    via: str | None
    route_reason: str
    """Why it went to that server, as routed at send time (see GET /v1/audit for changes)."""
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    smtp_response: str | None
    message_id: str
    created_at: str | None
    sent_at: str | None

    @classmethod
    def of(cls, delivery: Delivery, reasons: RouteReasons) -> DeliveryOut:
        waiting = delivery.status in {Status.QUEUED, Status.DEFERRED, Status.SENDING}
        return cls(
            id=delivery.id,
            campaign_type=CampaignType(delivery.campaign_type),
            campaign_id=delivery.campaign_id,
            person_id=delivery.person_id,
            to=delivery.to_address,
            from_=delivery.from_address,
            subject=delivery.subject,
            status=Status(delivery.status),
            smtp_server_id=delivery.smtp_server_id,
            via=delivery.route_via,
            route_reason=reasons.of_delivery(delivery),
            attempts=delivery.attempts,
            next_attempt_at=isoformat(delivery.next_attempt_at) if waiting else None,
            last_error=delivery.last_error,
            smtp_response=delivery.smtp_response,
            message_id=delivery.message_id,
            created_at=isoformat(delivery.created_at),
            sent_at=isoformat(delivery.sent_at),
        )


class AttemptOut(BaseModel):
    """One attempt: when, the server it went to and why (`via`), and the server's reply
    (`reply_code` is None when no SMTP reply came: no route, a lost connection)."""

    attempted_at: str | None
    status: Status
    smtp_server_id: int | None
    via: str | None
    reply_code: int | None
    reply: str | None

    @classmethod
    def of(cls, attempt: DeliveryAttempt) -> AttemptOut:
        return cls(
            attempted_at=isoformat(attempt.attempted_at),
            status=Status(attempt.status),
            smtp_server_id=attempt.smtp_server_id,
            via=attempt.route_via,
            reply_code=attempt.reply_code,
            reply=attempt.reply,
        )


class DeliveryDetail(DeliveryOut):
    """A delivery with its attempts, oldest first (`attempts` stays their count)."""

    attempt_history: list[AttemptOut]


class DeliveryPage(BaseModel):
    data: list[DeliveryOut]
    next_cursor: int | None


@router.post("/v1/test_messages", status_code=202, response_model_by_alias=True)
def queue_test_message(body: TestMessage, caller: CurrentCaller, context: Context) -> DeliveryOut:
    letter = Letter(
        campaign_type=body.campaign_type.value,
        to_address=body.to,
        from_address=body.from_,
        reply_to=body.reply_to,
        subject=body.subject,
        text_body=body.text,
        html_body=body.html,
    )
    with context.database.session() as session:
        delivery = deliveries.queue_message(
            session, caller, letter, context.clock(), context.settings.message_lifetime_seconds
        )
        return DeliveryOut.of(delivery, RouteReasons.of(session, caller.workspace_id))


@router.get("/v1/deliveries", response_model_by_alias=True)
def list_deliveries(
    caller: CurrentCaller,
    context: Context,
    campaign_id: RowId | None = None,
    person_id: Text | None = None,
    status: Status | None = None,
    campaign_type: CampaignType | None = None,
    smtp_server_id: RowId | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: RowId | None = None,
) -> DeliveryPage:
    where = DeliveryFilter(campaign_id, person_id, status, campaign_type, smtp_server_id)
    with context.database.session() as session:
        page = deliveries.list_deliveries(session, caller, where, limit, before)
        reasons = RouteReasons.of(session, caller.workspace_id)
        return DeliveryPage(
            data=[DeliveryOut.of(d, reasons) for d in page.deliveries],
            next_cursor=page.next_cursor,
        )


@router.get("/v1/deliveries/{delivery_id}", response_model_by_alias=True)
def get_delivery(delivery_id: RowId, caller: CurrentCaller, context: Context) -> DeliveryDetail:
    with context.database.session() as session:
        delivery = deliveries.get_delivery(session, caller, delivery_id)
        history = [AttemptOut.of(a) for a in deliveries.attempts_of(session, delivery)]
        summary = DeliveryOut.of(delivery, RouteReasons.of(session, caller.workspace_id))
        return DeliveryDetail(**summary.model_dump(), attempt_history=history)
