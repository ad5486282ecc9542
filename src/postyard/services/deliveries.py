"""Queueing messages and reading back what became of them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from postyard.db.models import Delivery, DeliveryAttempt
from postyard.delivery import outbox
from postyard.delivery.outbox import Letter
from postyard.delivery.policy import Status
from postyard.services.errors import NotFound
from postyard.services.workspaces import Caller


def queue_message(
    session: Session, caller: Caller, letter: Letter, now: datetime, lifetime_seconds: float
) -> Delivery:
    return outbox.enqueue(
        session, caller.workspace_id, letter, now, timedelta(seconds=lifetime_seconds)
    )


@dataclass(frozen=True)
class DeliveryFilter:
    campaign_id: int | None = None
    person_id: str | None = None
    status: Status | None = None
    campaign_type: str | None = None
    smtp_server_id: int | None = None
    address: str | None = None
    """Part of the recipient's address, matched without regard to case."""


@dataclass(frozen=True)
class Page:
    deliveries: list[Delivery]
    next_cursor: int | None


def list_deliveries(
    session: Session, caller: Caller, where: DeliveryFilter, limit: int, before: int | None
) -> Page:
    """Newest first; `before` is the cursor the previous page returned."""
    query = select(Delivery).where(Delivery.workspace_id == caller.workspace_id)
    for column, value in (
        (Delivery.campaign_id, where.campaign_id),
        (Delivery.person_id, where.person_id),
        (Delivery.status, where.status),
        (Delivery.campaign_type, where.campaign_type),
        (Delivery.smtp_server_id, where.smtp_server_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.address:
        query = query.where(Delivery.to_address.icontains(where.address, autoescape=True))
    if before is not None:
        query = query.where(Delivery.id < before)
    rows = list(session.scalars(query.order_by(Delivery.id.desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return Page(rows[:limit], next_cursor)


def get_delivery(session: Session, caller: Caller, delivery_id: int) -> Delivery:
    delivery = session.get(Delivery, delivery_id)
    if delivery is None or delivery.workspace_id != caller.workspace_id:
        raise NotFound(f"No delivery with id {delivery_id} in this workspace.")
    return delivery


def attempts_of(session: Session, delivery: Delivery) -> list[DeliveryAttempt]:
    """Every attempt at `delivery`, oldest first: how it came to its status (the delivery row
    keeps only the latest reply)."""
    return list(
        session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id == delivery.id)
            .order_by(DeliveryAttempt.id)
        )
    )
