"""The routing rules R1-R7 of the design brief, free of I/O.

Everything that decides which SMTP server may hold which delivery role, and
which server carries a message of a given campaign type, lives here so that the
API, the web UI, the worker and the demo all obey one definition. Callers hand
in plain snapshots of a workspace's servers and get back decisions or a
`RuleViolation` that names the rule and the server involved.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum


class CampaignType(StrEnum):
    SEGMENT_TRIGGERED = "segment_triggered"
    EVENT_TRIGGERED = "event_triggered"
    NEWSLETTER = "newsletter"
    TRIGGERED_BROADCAST = "triggered_broadcast"

    @property
    def role(self) -> Role:
        """The specific delivery role whose server carries this type."""
        return SERVING_ROLE[self]

    @property
    def label(self) -> str:
        return self.role.label


class Role(StrEnum):
    ALL_EMAILS = "all_emails"
    NONE = "none"
    SEGMENT_TRIGGERED = "segment_triggered"
    EVENT_TRIGGERED = "event_triggered"
    NEWSLETTERS = "newsletters"
    TRIGGERED_BROADCASTS = "triggered_broadcasts"

    @property
    def label(self) -> str:
        """The words the UI and error messages use for the role."""
        return self.value.replace("_", " ").title()

    @property
    def is_specific(self) -> bool:
        return self in SPECIFIC_ROLES


# The one place that ties a campaign type to the role that serves it. A new
# campaign type is a new `CampaignType` member, a new `Role` member and a row here.
SERVING_ROLE: dict[CampaignType, Role] = {
    CampaignType.SEGMENT_TRIGGERED: Role.SEGMENT_TRIGGERED,
    CampaignType.EVENT_TRIGGERED: Role.EVENT_TRIGGERED,
    CampaignType.NEWSLETTER: Role.NEWSLETTERS,
    CampaignType.TRIGGERED_BROADCAST: Role.TRIGGERED_BROADCASTS,
}
SPECIFIC_ROLES: frozenset[Role] = frozenset(SERVING_ROLE.values())


class Plan(StrEnum):
    STANDARD = "standard"
    PREMIUM = "premium"

    @property
    def server_limit(self) -> int:
        return {Plan.STANDARD: 1, Plan.PREMIUM: 20}[self]


class Via(StrEnum):
    """Why a message went to the server it went to."""

    SPECIFIC = "specific"
    FALLBACK = "fallback"
    FAILOVER = "failover"
    DEFAULT_RELAY = "default_relay"


@dataclass(frozen=True)
class Server:
    """What the rules need to know of one custom SMTP server (`id` is None before it exists)."""

    id: int | None
    name: str
    role: Role
    position: int


class RuleViolation(Exception):
    """A change that the routing rules refuse; `code` is the API error code."""

    code: str = "rule_violation"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PlanLimit(RuleViolation):
    code = "plan_limit"


class FallbackRequired(RuleViolation):
    code = "fallback_required"


class RoleTaken(RuleViolation):
    code = "role_taken"


def in_position_order(servers: Sequence[Server]) -> list[Server]:
    return sorted(servers, key=lambda server: (server.position, server.id))


def check_plan_allows_another(plan: Plan, server_count: int) -> None:
    """R1: refuse a server beyond the plan's cap."""
    if server_count >= plan.server_limit:
        raise PlanLimit(
            f"The {plan.value} plan allows at most {plan.server_limit} custom SMTP "
            f"server{'s' if plan.server_limit > 1 else ''}; this workspace has {server_count}."
        )


def default_role(existing: Sequence[Server]) -> Role:
    """R2: the first server is the fallback, later ones send nothing until told."""
    return Role.NONE if existing else Role.ALL_EMAILS


def check_servers(servers: Sequence[Server], changed: Server) -> None:
    """R3 and R4: refuse a proposed set of servers that breaks either rule.

    `servers` is the whole workspace as it would be after the change, and
    `changed` the server the change is about, so the message can name it.
    """
    if changed.role.is_specific:
        holder = next(
            (s for s in servers if s.role == changed.role and s.id != changed.id),
            None,
        )
        if holder is not None:
            raise RoleTaken(
                f"The role {changed.role.label} is already held by {describe(holder)}; "
                "set that server to another role first."
            )
    if servers and not any(s.role == Role.ALL_EMAILS for s in servers):
        raise FallbackRequired(
            f"{_capitalized(describe(changed))} cannot be {changed.role.label}: at least one "
            "server must be All Emails, the fallback for campaign types without a server "
            "of their own."
        )


def check_role_change(servers: Sequence[Server], server_id: int, role: Role) -> None:
    """Refuse giving `role` to the server `server_id` when R3 or R4 forbid it."""
    changed = replace(_find(servers, server_id), role=role)
    check_servers([changed if s.id == server_id else s for s in servers], changed)


def check_delete(servers: Sequence[Server], server_id: int) -> None:
    """R3: the last All Emails server may only go when it is the last server."""
    doomed = _find(servers, server_id)
    remaining = [s for s in servers if s.id != server_id]
    if remaining and not any(s.role == Role.ALL_EMAILS for s in remaining):
        raise FallbackRequired(
            f"{_capitalized(describe(doomed))} is the only All Emails server; "
            "set another server to All Emails before deleting it."
        )


def describe(server: Server) -> str:
    if server.id is None:
        return f"the new server '{server.name}'"
    return f"server '{server.name}' (id {server.id})"


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _find(servers: Sequence[Server], server_id: int) -> Server:
    for server in servers:
        if server.id == server_id:
            return server
    raise KeyError(server_id)


def primary_fallback(servers: Sequence[Server]) -> Server | None:
    """R4: the first All Emails server by position."""
    return next((s for s in in_position_order(servers) if s.role == Role.ALL_EMAILS), None)


@dataclass(frozen=True)
class Route:
    """Where one campaign type's messages go: a server, or nowhere yet (R7).

    `down` is the server the type would go to were it reachable, when failover routes
    around it; None otherwise.
    """

    campaign_type: CampaignType
    server: Server | None
    via: Via | None
    down: Server | None = None

    @property
    def explanation(self) -> str:
        if self.via == Via.SPECIFIC and self.server is not None:
            return f"specific: '{self.server.name}' is set to {self.campaign_type.label}"
        if self.via == Via.FALLBACK:
            return f"fallback: no server is set to {self.campaign_type.label}"
        if self.via == Via.FAILOVER and self.down is not None:
            return (
                f"failover: '{self.down.name}' is set to {self.campaign_type.label} but cannot "
                "be reached; the primary All Emails server carries it meanwhile"
            )
        if self.via == Via.DEFAULT_RELAY:
            return "no custom SMTP server: the instance's default relay carries it"
        return "no custom SMTP server and no default relay: messages wait as deferred (no_route)"


def resolve(
    servers: Sequence[Server],
    campaign_type: CampaignType,
    has_default_relay: bool = False,
    *,
    unreachable: Collection[int] = frozenset(),
    failover: bool = False,
) -> Route:
    """R5: the server set to the type's role, else the primary All Emails server.

    R7: with no server at all, the instance's default relay if there is one;
    otherwise no route, and the message waits.

    Failover (a workspace setting): when the type's own server is among the
    `unreachable` ids, the primary All Emails server carries the type instead, so
    that one server's outage does not hold that kind of mail back. Only a specific
    server fails over, and only to a primary fallback that is itself reachable:
    mail already on the fallback has nowhere better to go, and waits as deferred.
    """
    specific = next((s for s in servers if s.role == campaign_type.role), None)
    fallback = primary_fallback(servers)
    if specific is not None:
        if (
            failover
            and specific.id in unreachable
            and fallback is not None
            and fallback.id not in unreachable
        ):
            return Route(campaign_type, fallback, Via.FAILOVER, down=specific)
        return Route(campaign_type, specific, Via.SPECIFIC)
    if fallback is not None:
        return Route(campaign_type, fallback, Via.FALLBACK)
    return Route(campaign_type, None, Via.DEFAULT_RELAY if has_default_relay else None)


@dataclass(frozen=True)
class IdleServer:
    """A server that carries no campaign type, and why."""

    server: Server
    reason: str


@dataclass(frozen=True)
class RoutingTable:
    routes: list[Route]
    idle: list[IdleServer]


def routing_table(
    servers: Sequence[Server],
    has_default_relay: bool = False,
    *,
    unreachable: Collection[int] = frozenset(),
    failover: bool = False,
) -> RoutingTable:
    """The effective routing of every campaign type, and the servers left idle.

    A server that failover routes around is not idle: it is its type's server, down.
    """
    routes = [
        resolve(servers, t, has_default_relay, unreachable=unreachable, failover=failover)
        for t in CampaignType
    ]
    used = {
        server.id for route in routes for server in (route.server, route.down) if server is not None
    }
    primary = primary_fallback(servers)
    idle = [
        IdleServer(server, _idle_reason(server, primary))
        for server in in_position_order(servers)
        if server.id not in used
    ]
    return RoutingTable(routes, idle)


def _idle_reason(server: Server, primary: Server | None) -> str:
    if server.role == Role.NONE:
        return "set to None"
    if primary is not None and server.id != primary.id:
        return f"All Emails, but '{primary.name}' comes first and is the primary fallback"
    return "All Emails, but every campaign type has a server of its own"
