"""The effective routing of a workspace, in the words the API and the UI show.

It is the routing the workers apply right now: with failover on, a campaign type whose own
server the workers found unreachable shows the primary All Emails server, `via: failover`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from postyard import routing
from postyard.routing import CampaignType, Via
from postyard.services.smtp_servers import as_rule_servers, list_servers
from postyard.services.workspaces import Caller, workspace_settings


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
class ReachabilityLine:
    """Whether the workers could reach a server when they last tried; down since when, and why."""

    smtp_server_id: int
    smtp_server_name: str
    role: routing.Role
    reachable: bool
    unreachable_since: datetime | None
    unreachable_error: str | None


@dataclass(frozen=True)
class RoutingReport:
    routes: list[RouteLine]
    unused_servers: list[IdleLine]
    servers: list[ReachabilityLine]
    failover: bool


def routing_report(session: Session, caller: Caller, has_default_relay: bool) -> RoutingReport:
    rows = list_servers(session, caller)
    failover = workspace_settings(session, caller).failover
    unreachable = {row.id for row in rows if row.unreachable_since is not None}
    table = routing.routing_table(
        as_rule_servers(rows), has_default_relay, unreachable=unreachable, failover=failover
    )
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
        servers=[
            ReachabilityLine(
                row.id,
                row.name,
                routing.Role(row.role),
                row.unreachable_since is None,
                row.unreachable_since,
                row.unreachable_error,
            )
            for row in rows
        ],
        failover=failover,
    )
