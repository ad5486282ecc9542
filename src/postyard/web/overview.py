"""`/overview`: the last day's mail per server and hour, the queue, and servers in trouble."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, Response

from postyard.api.context import Context
from postyard.services import overview, smtp_servers
from postyard.web.chart import Series, hourly_chart
from postyard.web.common import PageRoute, render
from postyard.web.session import CurrentSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

HOURS = 24
TROUBLE_WINDOW = timedelta(hours=1)


@router.get("/overview")
def overview_page(request: Request, web: CurrentSession, context: Context) -> Response:
    now = context.clock()
    first_hour = overview.floor_hour(now) - timedelta(hours=HOURS - 1)
    hours = [first_hour + timedelta(hours=i) for i in range(HOURS)]
    with context.database.session() as session:
        servers = smtp_servers.list_servers(session, web.caller)
        counts = overview.sent_per_hour(
            session, web.caller, first_hour, first_hour + timedelta(hours=HOURS)
        )
        queue = overview.queue(session, web.caller)
        troubles = overview.troubled_servers(session, web.caller, now - TROUBLE_WINDOW)
    names = {server.id: server.name for server in servers}

    # One series per server in position order, then servers deleted since, then the relay.
    order: list[int | None] = [server.id for server in servers]
    order += sorted({c.smtp_server_id for c in counts} - set(order), key=lambda i: (i is None, i))
    by_key = {(c.smtp_server_id, c.hour): c.count for c in counts}
    series = []
    for server_id in order:
        values = [by_key.get((server_id, hour), 0) for hour in hours]
        if server_id not in names and not any(values):
            continue
        series.append(Series(_name(server_id, names), values))

    return render(
        request,
        "overview.html",
        session=web,
        nav="overview",
        chart=hourly_chart(hours, series),
        queue=queue,
        oldest_age=(now - queue.oldest_created_at).total_seconds()
        if queue.oldest_created_at
        else None,
        troubles=[
            {
                "server_id": t.smtp_server_id if t.smtp_server_id in names else None,
                "name": _name(t.smtp_server_id, names),
                "sent": t.sent,
                "deferred": t.deferred,
                "failed": t.failed,
                "last_error": t.last_error,
                "last_error_at": t.last_error_at,
            }
            for t in troubles
        ],
        trouble_minutes=int(TROUBLE_WINDOW.total_seconds() // 60),
        has_servers=bool(servers),
        now=now,
    )


def _name(server_id: int | None, names: dict[int, str]) -> str:
    if server_id is None:
        return "default relay"
    return names.get(server_id, f"server #{server_id} (deleted)")
