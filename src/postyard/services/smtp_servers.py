"""Configuring a workspace's custom SMTP servers under the routing rules.

Every change is checked against `postyard.routing` on the state the workspace
would have afterwards; a refused change raises before anything is written. The host
check, which may resolve a name, runs before the workspace lock is taken.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from postyard import routing
from postyard.clock import utcnow
from postyard.db.models import SmtpServer
from postyard.delivery import outbox
from postyard.delivery.endpoints import Endpoint, HostNotAllowed, endpoint_for, host_guard
from postyard.routing import Role
from postyard.services import audit
from postyard.services.audit import Action, ObjectType
from postyard.services.errors import Conflict, InvalidInput, NotFound
from postyard.services.runtime import Runtime
from postyard.services.workspaces import Caller, lock_workspace


class Security(StrEnum):
    STARTTLS = "starttls"
    TLS = "tls"
    NONE = "none"


@dataclass(frozen=True)
class ServerFields:
    """What a user sets when adding a server; `role` and `position` default by the rules."""

    name: str
    host: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = None
    ca_bundle: str | None = None
    role: Role | None = None
    position: int | None = None
    max_connections: int = 4
    rate_limit_per_second: float | None = None
    max_messages_per_connection: int | None = None


def list_servers(session: Session, caller: Caller) -> list[SmtpServer]:
    return list(
        session.scalars(
            select(SmtpServer)
            .where(SmtpServer.workspace_id == caller.workspace_id)
            .order_by(SmtpServer.position, SmtpServer.id)
        )
    )


def get_server(session: Session, caller: Caller, server_id: int) -> SmtpServer:
    server = session.get(SmtpServer, server_id)
    if server is None or server.workspace_id != caller.workspace_id:
        raise _not_found(server_id)
    return server


def reachable_endpoint(
    session: Session, caller: Caller, server_id: int, runtime: Runtime
) -> Endpoint:
    """The server as the worker reaches it (credentials decrypted, host policy applied), for
    a connection test."""
    server = get_server(session, caller, server_id)
    return endpoint_for(
        server, runtime.box, runtime.settings.smtp_timeout_seconds, host_guard(runtime.settings)
    )


def as_rule_servers(servers: list[SmtpServer]) -> list[routing.Server]:
    return [routing.Server(s.id, s.name, Role(s.role), s.position) for s in servers]


def create_server(
    session: Session,
    caller: Caller,
    fields: ServerFields,
    runtime: Runtime,
) -> SmtpServer:
    _check_host_allowed(runtime, fields.host, fields.port)
    lock_workspace(session, caller.workspace_id)
    existing = list_servers(session, caller)
    routing.check_plan_allows_another(caller.plan, len(existing))
    _check_name_free(existing, fields.name)
    _check_ca_bundle(fields.ca_bundle)
    role = fields.role or routing.default_role(as_rule_servers(existing))
    server = SmtpServer(
        workspace_id=caller.workspace_id,
        name=fields.name,
        host=fields.host,
        port=fields.port,
        security=fields.security.value,
        username=fields.username,
        password_encrypted=runtime.box.encrypt(fields.password) if fields.password else None,
        ca_bundle=fields.ca_bundle,
        role=role.value,
        position=len(existing) + 1,
        max_connections=fields.max_connections,
        rate_limit_per_second=fields.rate_limit_per_second,
        max_messages_per_connection=fields.max_messages_per_connection,
    )
    proposed = routing.Server(None, server.name, role, server.position)
    routing.check_servers([*as_rule_servers(existing), proposed], proposed)
    session.add(server)
    session.flush()
    positions = _positions(existing)
    if fields.position is not None:
        _move(existing, server, fields.position)
    _record(session, caller, Action.CREATE, server.id, None, audit.snapshot(server))
    _record_moves(session, caller, positions, existing)
    outbox.retry_deferred_now(session, caller.workspace_id, utcnow())
    return server


def update_server(
    session: Session,
    caller: Caller,
    server_id: int,
    changes: Mapping[str, Any],
    runtime: Runtime,
) -> SmtpServer:
    """Apply the fields present in `changes`; a `None` password clears the stored one."""
    if "host" in changes or "port" in changes:
        _check_host_change(session, caller, server_id, changes, runtime)
    lock_workspace(session, caller.workspace_id)
    server = get_server(session, caller, server_id)
    servers = list_servers(session, caller)
    others = [s for s in servers if s.id != server.id]
    before, positions = audit.snapshot(server), _positions(others)
    if "role" in changes:
        routing.check_role_change(as_rule_servers(servers), server.id, changes["role"])
        server.role = Role(changes["role"]).value
    if "name" in changes:
        _check_name_free(others, changes["name"])
    if "ca_bundle" in changes:
        _check_ca_bundle(changes["ca_bundle"])
    if "password" in changes:
        password = changes["password"]
        server.password_encrypted = runtime.box.encrypt(password) if password else None
    for field in (
        "name",
        "host",
        "port",
        "username",
        "ca_bundle",
        "max_connections",
        "rate_limit_per_second",
        "max_messages_per_connection",
    ):
        if field in changes:
            setattr(server, field, changes[field])
    if "security" in changes:
        server.security = Security(changes["security"]).value
    if "position" in changes:
        _move(others, server, changes["position"])
    after = audit.snapshot(server, replaced={"password"} if "password" in changes else ())
    action = Action.ROLE_CHANGE if after["role"] != before["role"] else Action.UPDATE
    _record(session, caller, action, server.id, before, after)
    _record_moves(session, caller, positions, others)
    outbox.retry_deferred_now(session, caller.workspace_id, utcnow())
    return server


def delete_server(session: Session, caller: Caller, server_id: int) -> None:
    lock_workspace(session, caller.workspace_id)
    server = get_server(session, caller, server_id)
    servers = list_servers(session, caller)
    routing.check_delete(as_rule_servers(servers), server.id)
    others = [s for s in servers if s.id != server.id]
    positions = _positions(others)
    _record(session, caller, Action.DELETE, server.id, audit.snapshot(server), None)
    session.delete(server)
    _renumber(others)
    _record_moves(session, caller, positions, others)
    outbox.retry_deferred_now(session, caller.workspace_id, utcnow())


def _move(others: list[SmtpServer], server: SmtpServer, position: int) -> None:
    """Place `server` at 1-based `position` among `others`, keeping positions 1..n."""
    index = max(0, min(position - 1, len(others)))
    ordered = sorted(others, key=lambda s: (s.position, s.id))
    ordered.insert(index, server)
    _renumber(ordered)


def _positions(servers: list[SmtpServer]) -> dict[int, int]:
    return {server.id: server.position for server in servers}


def _record(
    session: Session,
    caller: Caller,
    action: Action,
    server_id: int,
    before: audit.Snapshot | None,
    after: audit.Snapshot | None,
) -> None:
    audit.record(session, caller.actor, action, ObjectType.SMTP_SERVER, server_id, before, after)


def _record_moves(
    session: Session, caller: Caller, positions: dict[int, int], servers: list[SmtpServer]
) -> None:
    """Audit the servers that moved because another was placed, moved or deleted before
    them: a move can change which All Emails server is the primary fallback (R4)."""
    for server in servers:
        if server.position != positions[server.id]:
            was, now = {"position": positions[server.id]}, {"position": server.position}
            _record(session, caller, Action.REORDER, server.id, was, now)


def _renumber(ordered: list[SmtpServer]) -> None:
    for position, server in enumerate(ordered, start=1):
        if server.position != position:
            server.position = position


def _check_name_free(servers: list[SmtpServer], name: str) -> None:
    holder = next((s for s in servers if s.name == name), None)
    if holder is not None:
        raise Conflict(
            f"Another SMTP server (id {holder.id}) is already named '{name}'.", code="name_taken"
        )


def _not_found(server_id: int) -> NotFound:
    return NotFound(f"No SMTP server with id {server_id} in this workspace.")


def _check_host_change(
    session: Session, caller: Caller, server_id: int, changes: Mapping[str, Any], runtime: Runtime
) -> None:
    """Check the host and port a server would have, before the workspace lock: the check may
    resolve a name, and nobody should wait on DNS for the lock. Reads columns, not the row,
    so the server loaded under the lock is current. A concurrent change to the field not in
    `changes` is no gap: the policy judges the port and the host's addresses separately, and
    that change was checked by its own request."""
    stored = session.execute(
        select(SmtpServer.host, SmtpServer.port).where(
            SmtpServer.id == server_id, SmtpServer.workspace_id == caller.workspace_id
        )
    ).one_or_none()
    if stored is None:
        raise _not_found(server_id)
    _check_host_allowed(runtime, changes.get("host", stored.host), changes.get("port", stored.port))


def _check_host_allowed(runtime: Runtime, host: str, port: int) -> None:
    """Refuse a host the instance's policy forbids; the guard is built here, from the
    settings, so that no caller can configure a server without it."""
    try:
        host_guard(runtime.settings).check(host, port)
    except HostNotAllowed as refusal:
        raise InvalidInput(
            f"This instance may not connect to that SMTP server: {refusal}.",
            code="host_not_allowed",
        ) from None


def _check_ca_bundle(ca_bundle: str | None) -> None:
    if not ca_bundle:
        return
    try:
        if "\x00" in ca_bundle:
            raise ValueError("it contains a NUL character")
        ssl.create_default_context(cadata=ca_bundle)
    except (ssl.SSLError, ValueError, TypeError) as error:  # TypeError: non-ASCII text
        raise InvalidInput(
            f"ca_bundle is not a PEM certificate bundle: {error}", code="invalid_ca_bundle"
        ) from None
