"""The effective routing of a workspace, in the words the API and the UI show."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from postyard import routing
from postyard.routing import CampaignType, Via
from postyard.services.smtp_servers import as_rule_servers, list_servers
from postyard.services.workspaces import Caller


@dataclass(frozen=True)
class RouteLine:
    campaign_type: CampaignType
    smtp_server_id: int | None
    smtp_server_name: str | None
    via: Via | None
    explanation: str


@dataclass(frozen=True)
class IdleLine:
    smtp_server_id: int
    smtp_server_name: str
    role: routing.Role
    reason: str


@dataclass(frozen=True)
class RoutingReport:
    routes: list[RouteLine]
    unused_servers: list[IdleLine]


def routing_report(session: Session, caller: Caller, has_default_relay: bool) -> RoutingReport:
    servers = as_rule_servers(list_servers(session, caller))
    table = routing.routing_table(servers, has_default_relay)
    return RoutingReport(
        routes=[
            RouteLine(
                route.campaign_type,
                route.server.id if route.server else None,
                route.server.name if route.server else None,
                route.via,
                route.explanation,
            )
            for route in table.routes
        ],
        unused_servers=[
            IdleLine(idle.server.id or 0, idle.server.name, idle.server.role, idle.reason)
            for idle in table.idle
        ],
    )
