"""`/v1/test_messages` queues a message as a campaign type would; `/v1/deliveries` tells
what became of every message."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from postyard.api.context import Context, CurrentCaller
from postyard.api.fields import STRICT, EmailAddress, HeaderLine, Mailbox, RowId, Text
from postyard.clock import isoformat
from postyard.db.models import Delivery
from postyard.delivery.outbox import Letter
from postyard.delivery.policy import Status
from postyard.routing import CampaignType
from postyard.services import deliveries
from postyard.services.deliveries import DeliveryFilter

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
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    smtp_response: str | None
    message_id: str
    created_at: str | None
    sent_at: str | None

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryOut:
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
            attempts=delivery.attempts,
            next_attempt_at=isoformat(delivery.next_attempt_at) if waiting else None,
            last_error=delivery.last_error,
            smtp_response=delivery.smtp_response,
            message_id=delivery.message_id,
            created_at=isoformat(delivery.created_at),
            sent_at=isoformat(delivery.sent_at),
        )


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
        return DeliveryOut.of(delivery)


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
        return DeliveryPage(
            data=[DeliveryOut.of(d) for d in page.deliveries], next_cursor=page.next_cursor
        )


@router.get("/v1/deliveries/{delivery_id}", response_model_by_alias=True)
def get_delivery(delivery_id: RowId, caller: CurrentCaller, context: Context) -> DeliveryOut:
    with context.database.session() as session:
        return DeliveryOut.of(deliveries.get_delivery(session, caller, delivery_id))
