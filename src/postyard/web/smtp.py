"""`/smtp`: the workspace's SMTP servers, their delivery roles, and where each kind of mail goes.

Every change goes through `postyard.services.smtp_servers`, so the page obeys the
same routing rules as the API: a change the rules refuse is explained next to
the control that asked for it, and nothing is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from postyard.api.context import AppContext, Context
from postyard.api.fields import RowId
from postyard.db.models import SmtpServer
from postyard.delivery.outbox import Letter
from postyard.delivery.probe import Step, probe
from postyard.routing import CampaignType, PlanLimit, Role, RuleViolation, Via
from postyard.services import deliveries, smtp_servers
from postyard.services.errors import ServiceError
from postyard.services.routing_report import RoutingReport, routing_report
from postyard.services.workspaces import update_workspace_settings
from postyard.web.common import CheckedForm, PageRoute, render, see_other
from postyard.web.forms import (
    ROLE_CHOICES,
    SECURITY_CHOICES,
    SECURITY_LABELS,
    Form,
    new_server,
    server_changes,
    server_values,
    test_email,
)
from postyard.web.session import CurrentSession, WebSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

TEST_SUBJECT = "Test email from Postyard"
TEST_TEXT = (
    "This is a test email from Postyard. It was routed like a real message of its "
    "campaign type, to check which SMTP server carries that type."
)

# Where a refusal of the services belongs on a server form.
FIELD_OF_CODE = {
    "name_taken": "name",
    "invalid_ca_bundle": "ca_bundle",
    "role_taken": "role",
    "fallback_required": "role",
}


@dataclass(frozen=True)
class ServerRow:
    id: int
    name: str
    host: str
    port: int
    security: str
    security_label: str
    username: str | None
    has_password: bool
    role: str
    role_label: str
    position: int
    carries: list[str]
    idle_reason: str | None
    max_connections: int
    rate_limit_per_second: float | None
    max_messages_per_connection: int | None

    @property
    def plain(self) -> bool:
        return self.security == "none"

    @property
    def limits(self) -> list[str]:
        """The server's limits across all workers, in words, for the table."""
        limits = [f"{self.max_connections} connection{'s' if self.max_connections > 1 else ''}"]
        if self.rate_limit_per_second is not None:
            limits.append(f"{self.rate_limit_per_second:g} messages/s")
        if self.max_messages_per_connection is not None:
            limits.append(f"{self.max_messages_per_connection} messages per connection")
        return limits


@dataclass(frozen=True)
class Routes:
    """The routing panel: each campaign type in words, and the servers that send nothing."""

    lines: list[dict[str, Any]]
    idle: list[dict[str, Any]]
    report: RoutingReport

    def route_of(self, campaign_type: CampaignType) -> dict[str, Any]:
        return next(line for line in self.lines if line["type"] == campaign_type.value)


def _routes(report: RoutingReport) -> Routes:
    lines = []
    for route in report.routes:
        if route.smtp_server_name is not None:
            target = route.smtp_server_name
        elif route.via == Via.DEFAULT_RELAY:
            target = "the default relay"
        else:
            target = "nowhere yet"
        lines.append(
            {
                "type": route.campaign_type.value,
                "label": route.campaign_type.label,
                "server_id": route.smtp_server_id,
                "target": target,
                "via": route.via.value if route.via else None,
                "explanation": route.explanation,
            }
        )
    idle = [
        {"server_id": line.smtp_server_id, "name": line.smtp_server_name, "reason": line.reason}
        for line in report.unused_servers
    ]
    return Routes(lines, idle, report)


def _rows(servers: list[SmtpServer], routes: Routes) -> list[ServerRow]:
    idle = {line["server_id"]: line["reason"] for line in routes.idle}
    rows = []
    for server in servers:
        carries = [
            f"{line['label']} ({line['via']})"
            for line in routes.lines
            if line["server_id"] == server.id
        ]
        rows.append(
            ServerRow(
                id=server.id,
                name=server.name,
                host=server.host,
                port=server.port,
                security=server.security,
                security_label=SECURITY_LABELS.get(server.security, server.security),
                username=server.username,
                has_password=server.password_encrypted is not None,
                role=server.role,
                role_label=Role(server.role).label,
                position=server.position,
                carries=carries,
                idle_reason=idle.get(server.id),
                max_connections=server.max_connections,
                rate_limit_per_second=server.rate_limit_per_second,
                max_messages_per_connection=server.max_messages_per_connection,
            )
        )
    return rows


def _load(context: AppContext, web: WebSession) -> tuple[list[ServerRow], Routes]:
    with context.database.session() as session:
        servers = smtp_servers.list_servers(session, web.caller)
        report = routing_report(session, web.caller, context.settings.default_smtp_url is not None)
    routes = _routes(report)
    return _rows(servers, routes), routes


def _notice(code: str | None, rows: list[ServerRow], server_id: str | None) -> str | None:
    row = next((r for r in rows if str(r.id) == server_id), None)
    if code == "deleted":
        return "The server was deleted."
    if row is None:
        return None
    return {
        "added": f"Server “{row.name}” added as {row.role_label}.",
        "role": f"“{row.name}” is now {row.role_label}.",
        "moved": f"“{row.name}” is now at position {row.position}.",
        "saved": f"Changes to “{row.name}” saved.",
    }.get(code or "")


def _list_page(
    request: Request,
    context: AppContext,
    web: WebSession,
    *,
    status: int = 200,
    role_error: tuple[int, str, str] | None = None,
) -> Response:
    rows, routes = _load(context, web)
    notice = None
    if role_error is None:
        notice = _notice(
            request.query_params.get("notice"), rows, request.query_params.get("server")
        )
    return render(
        request,
        "smtp_list.html",
        session=web,
        status=status,
        nav="smtp",
        servers=rows,
        routes=routes,
        roles=ROLE_CHOICES,
        role_error=role_error,
        notice=notice,
        plan=web.caller.plan,
    )


@router.get("/smtp")
def list_page(request: Request, web: CurrentSession, context: Context) -> Response:
    return _list_page(request, context, web)


@router.post("/smtp/{server_id}/role")
def change_role(
    server_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    role = form.get("role", "")
    if role not in ROLE_CHOICES:
        return _list_page(
            request,
            context,
            web,
            status=422,
            role_error=(server_id, role, "Choose one of the roles in the list."),
        )
    try:
        with context.database.session() as session:
            smtp_servers.update_server(
                session, web.caller, server_id, {"role": Role(role)}, context.runtime
            )
    except RuleViolation as refused:
        message = f"Not changed: {refused.message}"
        return _list_page(
            request, context, web, status=_status(refused), role_error=(server_id, role, message)
        )
    return see_other(f"/smtp?notice=role&server={server_id}#server-{server_id}")


@router.post("/smtp/{server_id}/move")
def move(
    server_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    step = {"up": -1, "down": 1}.get(form.get("direction", ""))
    with context.database.session() as session:
        server = smtp_servers.get_server(session, web.caller, server_id)
        count = len(smtp_servers.list_servers(session, web.caller))
        if step is not None:
            position = min(max(server.position + step, 1), count)
            if position != server.position:
                smtp_servers.update_server(
                    session, web.caller, server_id, {"position": position}, context.runtime
                )
    return see_other(f"/smtp?notice=moved&server={server_id}#server-{server_id}")


@router.post("/smtp/failover")
def set_failover(web: CurrentSession, form: CheckedForm, context: Context) -> Response:
    """The workspace's failover setting; registered before `/smtp/{server_id}`, which would
    take the path for a server id."""
    with context.database.session() as session:
        update_workspace_settings(session, web.caller, failover=form.get("failover") == "on")
    return see_other("/smtp#failover")


@router.get("/smtp/new")
def new_page(request: Request, web: CurrentSession) -> Response:
    values = {"port": "587", "security": "starttls", "max_connections": "4", "role": ""}
    return _new_form(request, web, Form(values))


@router.post("/smtp/new")
def add(request: Request, web: CurrentSession, form: CheckedForm, context: Context) -> Response:
    checked, fields = new_server(form)
    if fields is None:
        return _new_form(request, web, checked, status=422)
    try:
        with context.database.session() as session:
            server = smtp_servers.create_server(session, web.caller, fields, context.runtime)
            session.flush()
            server_id = server.id
    except (RuleViolation, ServiceError) as refused:
        _place_error(checked, refused)
        return _new_form(request, web, checked, status=_status(refused))
    return see_other(f"/smtp?notice=added&server={server_id}#server-{server_id}")


def _new_form(request: Request, web: CurrentSession, form: Form, status: int = 200) -> Response:
    return render(
        request,
        "smtp_new.html",
        session=web,
        status=status,
        nav="smtp",
        form=form,
        had_password=bool(form.values.get("password")),
        securities=SECURITY_CHOICES,
        roles=ROLE_CHOICES,
    )


@router.get("/smtp/{server_id}")
def server_page(
    server_id: RowId, request: Request, web: CurrentSession, context: Context
) -> Response:
    notice = {"saved": "Changes saved."}.get(request.query_params.get("notice", ""))
    return _server_page(request, context, web, server_id, notice=notice)


@router.post("/smtp/{server_id}")
def edit(
    server_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    checked, changes = server_changes(form)
    if changes is None:
        return _server_page(request, context, web, server_id, edit=checked, status=422)
    try:
        with context.database.session() as session:
            smtp_servers.update_server(
                session,
                web.caller,
                server_id,
                changes,
                context.runtime,
            )
    except (RuleViolation, ServiceError) as refused:
        if getattr(refused, "status", None) == 404:
            raise
        _place_error(checked, refused)
        return _server_page(request, context, web, server_id, edit=checked, status=_status(refused))
    return see_other(f"/smtp/{server_id}?notice=saved")


@router.post("/smtp/{server_id}/test")
async def test_connection(
    server_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    def load_endpoint() -> Any:
        with context.database.session() as session:
            return smtp_servers.reachable_endpoint(session, web.caller, server_id, context.runtime)

    endpoint = await run_in_threadpool(load_endpoint)
    steps = await probe(endpoint, context.settings.hostname)
    return await run_in_threadpool(
        _server_page, request, context, web, server_id, steps=steps, status=200
    )


@router.post("/smtp/{server_id}/send-test")
def send_test(
    server_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    checked, email = test_email(form)
    if email is None:
        return _server_page(request, context, web, server_id, test=checked, status=422)
    with context.database.session() as session:
        smtp_servers.get_server(session, web.caller, server_id)
        delivery = deliveries.queue_message(
            session,
            web.caller,
            Letter(
                campaign_type=email.campaign_type.value,
                to_address=email.to,
                from_address=email.from_,
                subject=email.subject,
                text_body=email.text,
            ),
            context.clock(),
            context.settings.message_lifetime_seconds,
        )
        delivery_id = delivery.id
    return see_other(f"/deliveries/{delivery_id}?notice=queued")


@router.get("/smtp/{server_id}/delete")
def delete_page(
    server_id: RowId, request: Request, web: CurrentSession, context: Context
) -> Response:
    return _delete_page(request, context, web, server_id)


@router.post("/smtp/{server_id}/delete")
def delete(
    server_id: RowId, request: Request, web: CurrentSession, form: CheckedForm, context: Context
) -> Response:
    try:
        with context.database.session() as session:
            smtp_servers.delete_server(session, web.caller, server_id)
    except RuleViolation as refused:
        return _delete_page(
            request, context, web, server_id, error=refused.message, status=_status(refused)
        )
    return see_other("/smtp?notice=deleted")


def _delete_page(
    request: Request,
    context: AppContext,
    web: WebSession,
    server_id: int,
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    rows, _ = _load(context, web)
    row = next((r for r in rows if r.id == server_id), None)
    if row is None:
        with context.database.session() as session:  # raises NotFound: the 404 page
            smtp_servers.get_server(session, web.caller, server_id)
    return render(
        request,
        "smtp_delete.html",
        session=web,
        status=status,
        nav="smtp",
        server=row,
        last=len(rows) == 1,
        error=error,
    )


def _server_page(
    request: Request,
    context: AppContext,
    web: WebSession,
    server_id: int,
    *,
    edit: Form | None = None,
    test: Form | None = None,
    steps: list[Step] | None = None,
    notice: str | None = None,
    status: int = 200,
) -> Response:
    with context.database.session() as session:
        server = smtp_servers.get_server(session, web.caller, server_id)
        values = server_values(server)
        has_password = server.password_encrypted is not None
    rows, routes = _load(context, web)
    row = next(r for r in rows if r.id == server_id)
    if test is None:
        carried = next(
            (t for t in CampaignType if routes.route_of(t)["server_id"] == server_id),
            next(iter(CampaignType)),
        )
        test = Form({"campaign_type": carried.value, "subject": TEST_SUBJECT, "text": TEST_TEXT})
    type_choices = {
        t.value: f"{t.label} (→ {routes.route_of(t)['target']}, {routes.route_of(t)['via']})"
        if routes.route_of(t)["via"]
        else f"{t.label} (no route yet)"
        for t in CampaignType
    }
    return render(
        request,
        "smtp_server.html",
        session=web,
        status=status,
        nav="smtp",
        server=row,
        has_password=has_password,
        edit=edit or Form(values),
        had_password=bool(edit and edit.values.get("password")),
        test=test,
        steps=steps,
        steps_ok=steps is not None and all(step.ok for step in steps),
        securities=SECURITY_CHOICES,
        type_choices=type_choices,
        routes=routes,
        notice=notice,
    )


def _place_error(form: Form, refused: RuleViolation | ServiceError) -> None:
    field = FIELD_OF_CODE.get(refused.code, "_form")
    form.errors[field] = refused.message


def _status(refused: RuleViolation | ServiceError) -> int:
    if isinstance(refused, ServiceError):
        return refused.status
    return 403 if isinstance(refused, PlanLimit) else 409
