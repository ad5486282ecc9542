"""Why a delivery went to the server it went to, in words.

The words describe the route as the worker resolved it at send time (the stored
`route_via`), not the server's role now: roles change, and the audit trail
(`services.audit`) tells when. Together they answer "why did newsletters go out
through server 1 yesterday afternoon?".
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from postyard.db.models import Delivery, SmtpServer
from postyard.routing import CampaignType, Via

NOT_ROUTED = "not routed yet"
NO_ROUTE_ERROR = "no_route"


def route_reason(via: str | None, campaign_type: str, server: str, no_route: bool) -> str:
    """The reason for one route; `server` names the server that took it ("'smtp-main'"),
    `no_route` tells that the worker found no way to send it at all (R7)."""
    label = CampaignType(campaign_type).label
    if via == Via.SPECIFIC:
        return f"specific: {server} was the server set to {label}"
    if via == Via.FALLBACK:
        return (
            f"fallback: no server was set to {label}, so it went to {server}, "
            "the primary All Emails server"
        )
    if via == Via.FAILOVER:
        return (
            f"failover: the server set to {label} was unreachable, so it went to {server}, "
            "the primary All Emails server"
        )
    if via == Via.DEFAULT_RELAY:
        return "default relay: the workspace had no SMTP server of its own"
    if no_route:
        return "no route: the workspace had no SMTP server and no default relay is configured"
    return NOT_ROUTED


@dataclass(frozen=True)
class RouteReasons:
    """Route reasons for one workspace's deliveries, naming servers as they are named now."""

    server_names: dict[int, str]

    @classmethod
    def of(cls, session: Session, workspace_id: int) -> RouteReasons:
        rows = session.execute(
            select(SmtpServer.id, SmtpServer.name).where(SmtpServer.workspace_id == workspace_id)
        )
        return cls({server_id: name for server_id, name in rows})

    def of_delivery(self, delivery: Delivery) -> str:
        server_id = delivery.smtp_server_id
        name = self.server_names.get(server_id) if server_id is not None else None
        server = f"'{name}'" if name is not None else f"server #{server_id} (deleted since)"
        no_route = (delivery.last_error or "").startswith(NO_ROUTE_ERROR)
        return route_reason(delivery.route_via, delivery.campaign_type, server, no_route)
