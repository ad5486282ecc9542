"""`/v1/routing`: which server carries each campaign type right now, which send nothing, and
which the workers could not reach."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from postyard.api.context import Context, CurrentCaller
from postyard.services.routing_report import (
    IdleLine,
    ReachabilityLine,
    RouteLine,
    routing_report,
)

router = APIRouter(tags=["Routing"])


class RoutingOut(BaseModel):
    routes: list[RouteLine]
    unused_servers: list[IdleLine]
    servers: list[ReachabilityLine]
    """Every server in position order, with whether the workers could reach it last time."""
    failover: bool
    """The workspace's failover setting (`PATCH /v1/workspace`)."""


@router.get("/v1/routing")
def get_routing(caller: CurrentCaller, context: Context) -> RoutingOut:
    with context.database.session() as session:
        report = routing_report(session, caller, context.settings.default_smtp_url is not None)
    return RoutingOut(
        routes=report.routes,
        unused_servers=report.unused_servers,
        servers=report.servers,
        failover=report.failover,
    )
