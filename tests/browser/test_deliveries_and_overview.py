"""Test emails sent from the UI go out through the real worker to the server their campaign
type routes to, and the deliveries log, each delivery's page and the overview say so."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.browser.conftest import Workspace, expect
from tests.conftest import SECRET_KEY

from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery
from postyard.delivery.policy import Status
from postyard.localsmtp import LocalSMTPServer, free_port
from postyard.routing import Plan, Role, Via
from postyard.secretbox import SecretBox
from postyard.services import smtp_servers
from postyard.services.overview import floor_hour
from postyard.services.runtime import Runtime
from postyard.services.smtp_servers import Security, ServerFields
from postyard.services.workspaces import Caller

# Campaign type, its label, the server of DESIGN §8's example that carries it, and how.
EXPECTED = [
    ("segment_triggered", "Segment Triggered", "smtp-main", "fallback"),
    ("event_triggered", "Event Triggered", "smtp-events", "specific"),
    ("newsletter", "Newsletters", "smtp-news", "specific"),
    ("triggered_broadcast", "Triggered Broadcasts", "smtp-main", "fallback"),
]
ROLES = {
    "smtp-main": Role.ALL_EMAILS,
    "smtp-events": Role.EVENT_TRIGGERED,
    "smtp-news": Role.NEWSLETTERS,
}


def _runtime(database: Database) -> Runtime:
    return Runtime(
        Settings(database_url=database.url, secret_key=SECRET_KEY), SecretBox(SECRET_KEY)
    )


def configure_example(
    database: Database, workspace: Workspace, smtp: dict[str, LocalSMTPServer]
) -> dict[str, int]:
    """DESIGN §8's three servers, set up directly through the service; ids by name."""
    caller = Caller(workspace.id, Plan.PREMIUM, 0)
    ids = {}
    with database.session() as session:
        for name, role in ROLES.items():
            fields = ServerFields(
                name=name, host="127.0.0.1", port=smtp[name].port, security=Security.NONE, role=role
            )
            server = smtp_servers.create_server(session, caller, fields, _runtime(database))
            session.flush()
            ids[name] = server.id
    return ids


def wait_until_done(page: Any, timeout: float = 15.0) -> str:
    """Reload a delivery's page until the worker has finished with it; its status."""
    deadline = time.monotonic() + timeout
    while True:
        status = page.locator("#delivery-status").inner_text()
        if status not in {"queued", "sending"} or time.monotonic() > deadline:
            return status
        time.sleep(0.1)
        page.reload()


def test_a_test_email_as_each_campaign_type_reaches_its_server_and_is_in_the_log(
    signed_in: Any,
    workspace: Workspace,
    ui_database: Database,
    smtp: dict[str, LocalSMTPServer],
) -> None:
    page = signed_in
    ids = configure_example(ui_database, workspace, smtp)
    run = uuid.uuid4().hex[:8]
    to = f"reader-{run}@example.com"

    for campaign_type, label, server, via in EXPECTED:
        page.goto(f"/smtp/{ids['smtp-main']}")
        page.get_by_label("Campaign type").select_option(campaign_type)
        page.get_by_label("To", exact=True).fill(to)
        page.get_by_label("From", exact=True).fill("Acme <news@acme.example>")
        page.get_by_label("Subject").fill(f"{run} {campaign_type}")
        page.get_by_role("button", name="Send test email").click()
        expect(page).to_have_url(re.compile(r"/deliveries/\d+\?notice=queued$"))
        expect(page.get_by_role("status")).to_contain_text("Test email queued")

        assert wait_until_done(page) == "sent"
        expect(page.locator("#delivery-server")).to_have_text(server)
        expect(page.locator("#delivery-route")).to_contain_text(f"{via}:")
        expect(page.locator(".facts")).to_contain_text(label)
        expect(page.locator(".facts")).to_contain_text("250 ")
        expect(page.locator(".facts")).to_contain_text(
            re.compile(r"Message-ID\s*<\w+@acme\.example>")
        )
        received = [m.subject for m in smtp[server].messages]
        assert f"{run} {campaign_type}" in received

    page.goto("/deliveries")
    for campaign_type, label, server, _ in EXPECTED:
        row = page.locator("tr[data-delivery]", has_text=f"{run} {campaign_type}")
        expect(row.locator(".server")).to_have_text(server)
        expect(row.locator(".type")).to_have_text(label)
        expect(row).to_contain_text("sent")

    # Filters: by campaign type through the form, then by server and address.
    page.get_by_label("Campaign type").select_option("newsletter")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tr[data-delivery]")).to_have_count(1)
    expect(page.locator("tr[data-delivery] .server")).to_have_text("smtp-news")
    page.goto(f"/deliveries?server={ids['smtp-main']}&address=READER-{run}")
    expect(page.locator("tr[data-delivery] .subject")).to_have_text(
        [f"{run} triggered_broadcast", f"{run} segment_triggered"]
    )
    page.goto("/deliveries?status=nonsense")
    expect(page.locator("#filter-status-error")).to_have_text("Choose a status from the list.")

    page.goto("/overview")
    expect(page.locator("#sent-total")).to_have_text("4")
    expect(page.locator(".legend li")).to_have_text(
        ["smtp-main: 2", "smtp-events: 1", "smtp-news: 1"]
    )


def test_overview_charts_the_last_day_by_server_and_shows_the_queue_and_failing_servers(
    signed_in: Any,
    workspace: Workspace,
    ui_database: Database,
    smtp: dict[str, LocalSMTPServer],
    screenshot_path: Callable[[str], Path],
) -> None:
    """A day of history, recorded as the worker records deliveries, drawn as a chart."""
    page = signed_in
    ids = configure_example(ui_database, workspace, smtp)
    now = utcnow()
    this_hour = floor_hour(now)
    sent = 0
    rows = []
    for hours_ago in range(24):
        start = this_hour - timedelta(hours=hours_ago)
        volume = {  # a daily curve per server, busier in the afternoon (UTC)
            "smtp-main": 6 + (start.hour * 7) % 11,
            "smtp-events": 3 + (start.hour * 5) % 7,
            "smtp-news": 14 if start.hour == 9 else 0,
        }
        for name, count in volume.items():
            for i in range(count):
                moment = min(start + timedelta(minutes=(i * 7) % 60), now)
                rows.append(delivery_row(workspace, ids[name], Status.SENT, moment))
                sent += 1
    deferred_at = now - timedelta(minutes=25)
    rows.append(
        delivery_row(
            workspace,
            ids["smtp-events"],
            Status.DEFERRED,
            deferred_at,
            updated_at=now - timedelta(minutes=2),
            next_attempt_at=now + timedelta(hours=1),
            last_error="421 4.7.0 Too many connections, try again later",
        )
    )
    with ui_database.session() as session:
        session.add_all(rows)

    page.goto("/overview")
    expect(page.locator("#sent-total")).to_have_text(str(sent))
    expect(page.locator("#queue-depth")).to_have_text("1")
    expect(page.locator("#oldest-age")).to_have_text(re.compile(r"^2[56] min$"))
    expect(page.locator(".troubles li")).to_have_count(1)
    trouble = page.locator(".troubles li")
    expect(trouble).to_contain_text("smtp-events: 1 deferred, 0 failed")
    expect(trouble).to_contain_text("421 4.7.0 Too many connections, try again later")
    assert page.locator("svg rect.bar").count() > 24 * 2
    expect(page.locator(".legend li")).to_have_count(3)
    expect(page.locator("svg desc")).to_contain_text(f"{sent} sent in total")
    page.screenshot(path=screenshot_path("overview.png"), full_page=True)


def delivery_row(
    workspace: Workspace, server_id: int, status: Status, moment: Any, **fields: Any
) -> Delivery:
    values: dict[str, Any] = {
        "workspace_id": workspace.id,
        "campaign_type": "newsletter",
        "to_address": "reader@example.com",
        "from_address": "news@acme.example",
        "subject": "History",
        "message_id": f"<{uuid.uuid4().hex}@acme.example>",
        "status": status,
        "attempts": 1,
        "next_attempt_at": moment,
        "expires_at": moment + timedelta(days=3),
        "smtp_server_id": server_id,
        "route_via": Via.SPECIFIC,
        "created_at": moment,
        "updated_at": moment,
        "sent_at": moment if status == Status.SENT else None,
        "smtp_response": "250 OK" if status == Status.SENT else None,
    }
    values.update(fields)
    return Delivery(**values)


def test_a_delivery_page_lists_each_attempt_with_its_server_and_reply(
    signed_in: Any,
    workspace: Workspace,
    ui_database: Database,
    smtp: dict[str, LocalSMTPServer],
) -> None:
    """A server that cannot be reached defers the message; once it points at a real server,
    the next attempt sends it, and the page lists both attempts."""
    page = signed_in
    caller = Caller(workspace.id, Plan.PREMIUM, 0)
    runtime = _runtime(ui_database)
    with ui_database.session() as session:
        fields = ServerFields(
            name="smtp-main", host="127.0.0.1", port=free_port(), security=Security.NONE
        )
        server = smtp_servers.create_server(session, caller, fields, runtime)
        session.flush()
        server_id = server.id
    run = uuid.uuid4().hex[:8]
    page.goto(f"/smtp/{server_id}")
    page.get_by_label("Campaign type").select_option("newsletter")
    page.get_by_label("To", exact=True).fill(f"reader-{run}@example.com")
    page.get_by_label("From", exact=True).fill("Acme <news@acme.example>")
    page.get_by_label("Subject").fill(f"{run} attempts")
    page.get_by_role("button", name="Send test email").click()
    expect(page).to_have_url(re.compile(r"/deliveries/\d+\?notice=queued$"))
    delivery = page.url.split("?")[0]
    assert wait_until_done(page) == "deferred"

    with ui_database.session() as session:
        smtp_servers.update_server(
            session, caller, server_id, {"port": smtp["smtp-main"].port}, runtime
        )
    deadline = time.monotonic() + 15
    while wait_until_done(page) != "sent" and time.monotonic() < deadline:
        time.sleep(0.1)
        page.goto(delivery)
    rows = page.locator("#attempts tbody tr")
    expect(rows.last).to_contain_text("sent")
    expect(rows.last).to_contain_text("250")
    expect(rows.last.get_by_role("link", name="smtp-main")).to_have_attribute(
        "href", f"/smtp/{server_id}"
    )
    expect(rows.first).to_contain_text("deferred")
    expect(rows.first).to_contain_text("fallback")
    assert rows.count() >= 2
    page.set_viewport_size({"width": 390, "height": 900})
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the delivery page is {overflow}px wider than 390px"
