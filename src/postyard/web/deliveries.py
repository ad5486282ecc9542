"""`/deliveries`: the log of every message, filterable, and what became of each one,
attempt by attempt."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from postyard.api.context import AppContext, Context
from postyard.api.fields import RowId
from postyard.db.models import Delivery, DeliveryAttempt
from postyard.delivery.policy import Status
from postyard.routing import CampaignType, Via
from postyard.services import campaigns, deliveries, smtp_servers
from postyard.services.deliveries import DeliveryFilter
from postyard.services.route_reasons import RouteReasons
from postyard.web.common import PageRoute, render
from postyard.web.session import CurrentSession, WebSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 50
WAITING = {Status.QUEUED.value, Status.SENDING.value}
TYPE_CHOICES = {t.value: t.label for t in CampaignType}
STATUS_CHOICES = {s.value: s.value.capitalize() for s in Status}


@dataclass(frozen=True)
class ServerNames:
    """Names of the workspace's servers by id; a delivery may name one deleted since."""

    names: dict[int, str]

    def of(self, delivery: Delivery | DeliveryAttempt) -> str:
        if delivery.smtp_server_id is not None:
            return self.names.get(
                delivery.smtp_server_id, f"server #{delivery.smtp_server_id} (deleted)"
            )
        if delivery.route_via == Via.DEFAULT_RELAY:
            return "default relay"
        return "—"

    def known(self, server_id: int | None) -> int | None:
        """The id to link to: None for no server, or one deleted since."""
        return server_id if server_id in self.names else None


def _names(context: AppContext, web: WebSession) -> ServerNames:
    with context.database.session() as session:
        servers = smtp_servers.list_servers(session, web.caller)
    return ServerNames({server.id: server.name for server in servers})


def _campaign_names(context: AppContext, web: WebSession) -> dict[str, str]:
    with context.database.session() as session:
        return {
            str(campaign.id): campaign.name
            for campaign in campaigns.list_campaigns(session, web.caller)
        }


def _filters(
    request: Request, names: ServerNames, campaign_names: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The filter form's values as typed, and a problem per field that cannot be used."""
    query = request.query_params
    values = {
        name: query.get(name, "").strip()
        for name in ("campaign", "campaign_type", "server", "status", "address", "before")
    }
    errors: dict[str, str] = {}
    if values["campaign"] and values["campaign"] not in campaign_names:
        errors["campaign"] = "Choose a campaign from the list."
    if values["campaign_type"] and values["campaign_type"] not in TYPE_CHOICES:
        errors["campaign_type"] = "Choose a campaign type from the list."
    if values["status"] and values["status"] not in STATUS_CHOICES:
        errors["status"] = "Choose a status from the list."
    server = values["server"]
    if server and not (server.isascii() and server.isdigit() and int(server) in names.names):
        errors["server"] = "Choose a server from the list."
    if len(values["address"]) > 320 or "\x00" in values["address"]:
        errors["address"] = "An address is at most 320 characters."
    before = values["before"]
    if before and not (before.isascii() and before.isdigit() and int(before) < 2**31):
        errors["before"] = "Not a page of this log."
    return values, errors


@router.get("/deliveries")
def log_page(request: Request, web: CurrentSession, context: Context) -> Response:
    names = _names(context, web)
    campaign_names = _campaign_names(context, web)
    values, errors = _filters(request, names, campaign_names)
    rows: list[Delivery] = []
    next_cursor = None
    if not errors:
        server = values["server"]
        where = DeliveryFilter(
            campaign_id=int(values["campaign"]) if values["campaign"] else None,
            status=Status(values["status"]) if values["status"] else None,
            campaign_type=values["campaign_type"] or None,
            smtp_server_id=int(server) if server else None,
            address=values["address"] or None,
        )
        before = int(values["before"]) if values["before"] else None
        with context.database.session() as session:
            page = deliveries.list_deliveries(session, web.caller, where, PAGE_SIZE, before)
            rows = page.deliveries
            next_cursor = page.next_cursor
    filters = {k: v for k, v in values.items() if k != "before" and v}
    return render(
        request,
        "deliveries.html",
        session=web,
        nav="deliveries",
        filters=values,
        errors=errors,
        filtered=bool(filters),
        rows=[_row(d, names) for d in rows],
        older=f"/deliveries?{urlencode({**filters, 'before': next_cursor})}"
        if next_cursor
        else None,
        newest=f"/deliveries?{urlencode(filters)}" if values["before"] else None,
        campaign_choices=campaign_names,
        type_choices=TYPE_CHOICES,
        status_choices=STATUS_CHOICES,
        server_choices={str(i): n for i, n in names.names.items()},
        status=422 if errors else 200,
    )


def _row(delivery: Delivery, names: ServerNames) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "created_at": delivery.created_at,
        "type_label": TYPE_CHOICES.get(delivery.campaign_type, delivery.campaign_type),
        "to": delivery.to_address,
        "subject": delivery.subject,
        "status": delivery.status,
        "server": names.of(delivery),
        "server_id": names.known(delivery.smtp_server_id),
        "attempts": delivery.attempts,
    }


@router.get("/deliveries/{delivery_id}")
def detail_page(
    delivery_id: RowId, request: Request, web: CurrentSession, context: Context
) -> Response:
    names = _names(context, web)
    with context.database.session() as session:
        delivery = deliveries.get_delivery(session, web.caller, delivery_id)
        route = RouteReasons.of(session, web.caller.workspace_id).of_delivery(delivery)
        history = [
            {
                "attempted_at": attempt.attempted_at,
                "status": attempt.status,
                "server": names.of(attempt),
                "server_id": names.known(attempt.smtp_server_id),
                "via": attempt.route_via or "—",
                "reply_code": attempt.reply_code,
                "reply": attempt.reply,
            }
            for attempt in deliveries.attempts_of(session, delivery)
        ]
    now = context.clock()
    waiting = delivery.status in WAITING or delivery.status == Status.DEFERRED
    notice = None
    if request.query_params.get("notice") == "queued":
        notice = (
            "Test email queued. It is routed like any message of its campaign type; "
            "this page shows the server that took it once it is sent."
        )
    return render(
        request,
        "delivery.html",
        session=web,
        nav="deliveries",
        d=delivery,
        type_label=TYPE_CHOICES.get(delivery.campaign_type, delivery.campaign_type),
        server=names.of(delivery),
        server_id=names.known(delivery.smtp_server_id),
        history=history,
        route=route,
        waiting=waiting,
        next_in=_seconds(delivery.next_attempt_at, now) if waiting else None,
        notice=notice,
        # No script: while the worker has it in hand, the page reloads itself.
        refresh_seconds=2 if delivery.status in WAITING else None,
    )


def _seconds(moment: datetime, now: datetime) -> float:
    return (moment - now).total_seconds()
