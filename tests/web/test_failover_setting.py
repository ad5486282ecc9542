"""The failover checkbox on the SMTP servers page, and the servers it shows as down."""

from __future__ import annotations

from tests.web.conftest import Browserless

from postyard.clock import utcnow
from postyard.db.engine import Database
from postyard.delivery.reachability import mark_unreachable
from postyard.routing import Plan
from postyard.services.workspaces import Caller, workspace_settings


def failover(database: Database, web: Browserless) -> bool:
    with database.session() as session:
        caller = Caller(web.workspace_id, Plan.PREMIUM, 0)
        return workspace_settings(session, caller).failover


def test_the_checkbox_turns_failover_on_and_off_and_explains_itself(
    web: Browserless, database: Database
) -> None:
    page = web.get("/smtp").text
    assert 'name="failover"' in page and "cannot be reached" in page
    assert 'name="failover" checked' not in page

    response = web.submit("/smtp/failover", failover="on")
    assert response.status_code == 303
    assert failover(database, web) is True
    assert 'name="failover" checked' in web.get("/smtp").text

    web.submit("/smtp/failover")
    assert failover(database, web) is False


def test_a_server_the_workers_cannot_reach_is_shown_down_with_the_error(
    web: Browserless, database: Database
) -> None:
    web.submit("/smtp/new", name="smtp-main", host="smtp.example.com", port="587",
               security="starttls", max_connections="4", role="")  # fmt: skip
    server_id = web.get("/v1/smtp_servers", headers={"Authorization": f"Bearer {web.api_key}"})
    server_id = server_id.json()["data"][0]["id"]
    with database.session() as session:
        mark_unreachable(session, server_id, utcnow(), "cannot connect: Connection refused")

    page = web.get("/smtp").text
    assert 'data-down="smtp-main"' in page
    assert "Connection refused" in page
