"""`/v1/smtp_servers`: a workspace's own SMTP servers and their delivery roles."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, SecretStr
from starlette.concurrency import run_in_threadpool

from postyard.api.context import Context, CurrentCaller
from postyard.api.fields import (
    STRICT,
    Host,
    MaxConnections,
    MessagesPerConnection,
    Name,
    Patch,
    Port,
    Position,
    RateLimit,
    RowId,
)
from postyard.clock import isoformat
from postyard.db.models import SmtpServer
from postyard.delivery.endpoints import Endpoint
from postyard.delivery.probe import Step, probe
from postyard.routing import Role
from postyard.services import smtp_servers
from postyard.services.smtp_servers import Security, ServerFields

router = APIRouter(prefix="/v1/smtp_servers", tags=["SMTP servers"])


class ServerCreate(BaseModel):
    model_config = STRICT

    name: Name
    host: Host
    port: Port = 587
    security: Security = Security.STARTTLS
    username: Name | None = None
    password: SecretStr | None = None
    ca_bundle: str | None = None
    role: Role | None = None
    position: Position | None = None
    max_connections: MaxConnections = 4
    rate_limit_per_second: RateLimit | None = None
    max_messages_per_connection: MessagesPerConnection | None = None


class ServerPatch(Patch):
    """Only the fields sent change; `password: null` removes the stored password."""

    NULLABLE = frozenset(
        [
            "ca_bundle",
            "password",
            "username",
            "rate_limit_per_second",
            "max_messages_per_connection",
        ]
    )

    name: Name | None = None
    host: Host | None = None
    port: Port | None = None
    security: Security | None = None
    username: Name | None = None
    password: SecretStr | None = None
    ca_bundle: str | None = None
    role: Role | None = None
    position: Position | None = None
    max_connections: MaxConnections | None = None
    rate_limit_per_second: RateLimit | None = None
    max_messages_per_connection: MessagesPerConnection | None = None

    def changes(self) -> dict[str, Any]:
        changes = {name: getattr(self, name) for name in self.model_fields_set}
        if isinstance(changes.get("password"), SecretStr):
            changes["password"] = changes["password"].get_secret_value()
        return changes


class ServerOut(BaseModel):
    id: int
    name: str
    host: str
    port: int
    security: Security
    username: str | None
    has_password: bool
    ca_bundle: str | None
    role: Role
    position: int
    max_connections: int
    rate_limit_per_second: float | None
    max_messages_per_connection: int | None
    created_at: str | None
    updated_at: str | None

    @classmethod
    def of(cls, server: SmtpServer) -> ServerOut:
        return cls(
            id=server.id,
            name=server.name,
            host=server.host,
            port=server.port,
            security=Security(server.security),
            username=server.username,
            has_password=server.password_encrypted is not None,
            ca_bundle=server.ca_bundle,
            role=Role(server.role),
            position=server.position,
            max_connections=server.max_connections,
            rate_limit_per_second=server.rate_limit_per_second,
            max_messages_per_connection=server.max_messages_per_connection,
            created_at=isoformat(server.created_at),
            updated_at=isoformat(server.updated_at),
        )


class ServerList(BaseModel):
    data: list[ServerOut]


class TestReport(BaseModel):
    ok: bool
    steps: list[Step]


@router.post("", status_code=201)
def create_server(body: ServerCreate, caller: CurrentCaller, context: Context) -> ServerOut:
    fields = ServerFields(
        **body.model_dump(exclude={"password"}),
        password=body.password.get_secret_value() if body.password else None,
    )
    with context.database.session() as session:
        server = smtp_servers.create_server(session, caller, fields, context.runtime)
        session.flush()
        session.refresh(server)
        return ServerOut.of(server)


@router.get("")
def list_servers(caller: CurrentCaller, context: Context) -> ServerList:
    with context.database.session() as session:
        return ServerList(
            data=[ServerOut.of(s) for s in smtp_servers.list_servers(session, caller)]
        )


@router.get("/{server_id}")
def get_server(server_id: RowId, caller: CurrentCaller, context: Context) -> ServerOut:
    with context.database.session() as session:
        return ServerOut.of(smtp_servers.get_server(session, caller, server_id))


@router.patch("/{server_id}")
def update_server(
    server_id: RowId, body: ServerPatch, caller: CurrentCaller, context: Context
) -> ServerOut:
    with context.database.session() as session:
        server = smtp_servers.update_server(
            session,
            caller,
            server_id,
            body.changes(),
            context.runtime,
        )
        session.flush()
        session.refresh(server)
        return ServerOut.of(server)


@router.delete("/{server_id}", status_code=204)
def delete_server(server_id: RowId, caller: CurrentCaller, context: Context) -> Response:
    with context.database.session() as session:
        smtp_servers.delete_server(session, caller, server_id)
    return Response(status_code=204)


@router.post("/{server_id}/test")
async def test_server(server_id: RowId, caller: CurrentCaller, context: Context) -> TestReport:
    """Connect, EHLO, STARTTLS or TLS, AUTH, reporting the server's reply at each step."""

    def load_endpoint() -> Endpoint:
        with context.database.session() as session:
            return smtp_servers.reachable_endpoint(session, caller, server_id, context.runtime)

    endpoint = await run_in_threadpool(load_endpoint)
    steps = await probe(endpoint, context.settings.hostname)
    return TestReport(ok=all(step.ok for step in steps), steps=steps)
