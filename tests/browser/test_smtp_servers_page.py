"""The SMTP servers page in Chromium: add servers, give them roles through the drop-downs,
read the routing panel, and see a change the rules refuse explained next to its drop-down."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tests.browser.conftest import Workspace, expect

from postyard.db.engine import Database
from postyard.db.models import SmtpServer
from postyard.localsmtp import LocalSMTPServer

EXAMPLE_ROUTES = [
    "Segment Triggered → smtp-main (fallback: no server is set to Segment Triggered)",
    "Event Triggered → smtp-events (specific: 'smtp-events' is set to Event Triggered)",
    "Newsletters → smtp-news (specific: 'smtp-news' is set to Newsletters)",
    "Triggered Broadcasts → smtp-main (fallback: no server is set to Triggered Broadcasts)",
]


def add_server(page: Any, name: str, port: int, **fields: str) -> None:
    page.goto("/smtp/new")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Host", exact=True).fill(fields.get("host", "127.0.0.1"))
    page.get_by_label("Port", exact=True).fill(str(port))
    page.get_by_label("Security").select_option(fields.get("security", "none"))
    if "username" in fields:
        page.get_by_label("Username").fill(fields["username"])
    if "password" in fields:
        page.get_by_label("Password").fill(fields["password"])
    if "role" in fields:
        page.get_by_label("Delivery role").select_option(fields["role"])
    page.get_by_role("button", name="Add server").click()


def set_role(page: Any, server: str, role: str) -> None:
    page.get_by_label(f"Role of {server}").select_option(role)
    page.get_by_role("button", name=f"Save the role of {server}").click()


def routes(page: Any) -> list[str]:
    return [" ".join(text.split()) for text in page.locator(".routes li").all_inner_texts()]


def roles(page: Any) -> dict[str, str]:
    """Each server's role as its drop-down shows it, in the table's order."""
    shown = {}
    for row in page.locator("tr.server-row").all():
        name = row.get_attribute("data-server")
        shown[name] = row.get_by_label(f"Role of {name}").input_value()
    return shown


def test_routing_example_set_through_the_drop_downs_and_refused_changes_explained_inline(
    signed_in: Any,
    smtp: dict[str, LocalSMTPServer],
    screenshot_path: Callable[[str], Path],
) -> None:
    page = signed_in
    for name in ("smtp-main", "smtp-events", "smtp-news"):
        add_server(page, name, smtp[name].port)
        expect(page.get_by_role("status")).to_contain_text(f"Server “{name}” added")

    # R2: the first server is the fallback, later ones send nothing until told.
    assert roles(page) == {
        "smtp-main": "all_emails",
        "smtp-events": "none",
        "smtp-news": "none",
    }
    row = page.locator("tr.server-row", has_text="smtp-main")
    expect(row.locator(".hostport")).to_have_text(f"127.0.0.1:{smtp['smtp-main'].port}")
    expect(row).to_contain_text("none — not encrypted")

    set_role(page, "smtp-events", "event_triggered")
    expect(page.get_by_role("status")).to_have_text("“smtp-events” is now Event Triggered.")
    set_role(page, "smtp-news", "newsletters")
    assert routes(page) == EXAMPLE_ROUTES
    expect(page.locator(".idle")).to_have_count(0)

    # DESIGN §8: set #3 to None and newsletters go to #1.
    set_role(page, "smtp-news", "none")
    assert routes(page)[2] == (
        "Newsletters → smtp-main (fallback: no server is set to Newsletters)"
    )
    expect(page.locator(".idle li")).to_have_text(["smtp-news: set to None"])

    # R3: the last All Emails server cannot become Newsletters; nothing changes.
    before = routes(page)
    set_role(page, "smtp-main", "newsletters")
    error = page.locator("tr.server-row", has_text="smtp-main").locator(".field-error")
    expect(error).to_have_text(
        re.compile(
            r"Not changed: Server 'smtp-main' \(id \d+\) cannot be Newsletters: "
            r"at least one server must be All Emails"
        )
    )
    assert page.get_by_label("Role of smtp-main").get_attribute("aria-describedby") == (
        error.get_attribute("id")
    )
    assert roles(page)["smtp-main"] == "all_emails"
    assert routes(page) == before
    page.goto("/smtp")
    assert roles(page)["smtp-main"] == "all_emails"
    assert routes(page) == before

    # R4: with #3 back on Newsletters, the role is taken.
    set_role(page, "smtp-news", "newsletters")
    assert routes(page) == EXAMPLE_ROUTES
    set_role(page, "smtp-main", "newsletters")
    expect(
        page.locator("tr.server-row", has_text="smtp-main").locator(".field-error")
    ).to_contain_text("The role Newsletters is already held by server 'smtp-news'")
    assert roles(page) == {
        "smtp-main": "all_emails",
        "smtp-events": "event_triggered",
        "smtp-news": "newsletters",
    }
    assert routes(page) == EXAMPLE_ROUTES
    assert (
        page.evaluate(
            "() => [...document.querySelectorAll('.panel')]"
            ".filter(el => el.scrollWidth > el.clientWidth).length"
        )
        == 0
    ), "the table is wider than its panel"
    page.screenshot(path=screenshot_path("smtp-servers.png"), full_page=True)


def test_bad_input_comes_back_next_to_its_field_with_what_was_typed_and_nothing_stored(
    signed_in: Any, workspace: Workspace, ui_database: Database
) -> None:
    page = signed_in
    add_server(page, "smtp-bad", 70000, host="not a host!", username="postyard", password="pw")

    expect(page).to_have_url(re.compile(r"/smtp/new$"))
    expect(page.locator(".form-error")).to_contain_text("Nothing was saved")
    expect(page.locator("#f-host-error")).to_have_text(
        "'not a host!' is not a host name or IP address."
    )
    expect(page.locator("#f-port-error")).to_have_text(
        "The port must be a whole number from 1 to 65535."
    )
    expect(page.get_by_label("Host", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Name", exact=True)).to_have_value("smtp-bad")
    expect(page.get_by_label("Host", exact=True)).to_have_value("not a host!")
    expect(page.get_by_label("Port", exact=True)).to_have_value("70000")
    expect(page.get_by_label("Username")).to_have_value("postyard")
    # A password is never sent back to the browser, even one just typed.
    expect(page.get_by_label("Password")).to_have_value("")
    expect(page.locator("#f-password-hint")).to_contain_text("Type the password again")
    with ui_database.session() as session:
        stored = session.scalars(
            select(SmtpServer).where(SmtpServer.workspace_id == workspace.id)
        ).all()
    assert stored == []

    # A refusal of the rules lands next to its field too: a name already taken.
    page.get_by_label("Host", exact=True).fill("127.0.0.1")
    page.get_by_label("Port", exact=True).fill("2525")
    page.get_by_label("Password").fill("pw")
    page.get_by_role("button", name="Add server").click()
    expect(page.get_by_role("status")).to_contain_text("Server “smtp-bad” added")
    add_server(page, "smtp-bad", 2526)
    expect(page.locator("#f-name-error")).to_contain_text("is already named 'smtp-bad'")
    expect(page.get_by_label("Port", exact=True)).to_have_value("2526")


def test_edit_keeps_a_blank_password_removes_it_on_request_reorders_and_deletes(
    signed_in: Any, workspace: Workspace, ui_database: Database
) -> None:
    page = signed_in
    add_server(page, "smtp-one", 2525, username="postyard", password="s3cret")
    add_server(page, "smtp-two", 2526)
    with ui_database.session() as session:
        one, _ = session.scalars(
            select(SmtpServer)
            .where(SmtpServer.workspace_id == workspace.id)
            .order_by(SmtpServer.position)
        ).all()
    assert one.password_encrypted is not None

    page.goto(f"/smtp/{one.id}")
    expect(page.locator("#f-password-hint")).to_have_text(
        "A password is stored. Leave empty to keep it."
    )
    page.get_by_label("Port", exact=True).fill("2600")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_have_text("Changes saved.")
    expect(page.get_by_label("Port", exact=True)).to_have_value("2600")
    with ui_database.session() as session:
        kept = session.get(SmtpServer, one.id)
        assert kept is not None and kept.password_encrypted == one.password_encrypted

    page.get_by_label("Remove the stored password").check()
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#f-password-hint")).to_have_text("No password is stored.")
    with ui_database.session() as session:
        cleared = session.get(SmtpServer, one.id)
        assert cleared is not None and cleared.password_encrypted is None

    # Reorder: smtp-two up to the first place.
    page.goto("/smtp")
    page.get_by_role("button", name="Move smtp-two up").click()
    expect(page.locator("tr.server-row")).to_have_count(2)
    assert [r.get_attribute("data-server") for r in page.locator("tr.server-row").all()] == [
        "smtp-two",
        "smtp-one",
    ]

    # Deleting the only All Emails server is refused on the confirmation page (R3).
    page.get_by_role("link", name="Delete smtp-one").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delete “smtp-one”?")
    page.get_by_role("button", name="Delete smtp-one").click()
    expect(page.locator(".form-error")).to_contain_text("is the only All Emails server")
    page.goto("/smtp")
    page.get_by_role("link", name="Delete smtp-two").click()
    page.get_by_role("button", name="Delete smtp-two").click()
    expect(page.get_by_role("status")).to_have_text("The server was deleted.")
    assert [r.get_attribute("data-server") for r in page.locator("tr.server-row").all()] == [
        "smtp-one"
    ]


def test_connection_test_reports_each_step(
    signed_in: Any, workspace: Workspace, smtp: dict[str, LocalSMTPServer], ui_database: Database
) -> None:
    page = signed_in
    add_server(page, "smtp-main", smtp["smtp-main"].port)
    with ui_database.session() as session:
        server_id = session.scalar(
            select(SmtpServer.id).where(SmtpServer.workspace_id == workspace.id)
        )
    page.goto(f"/smtp/{server_id}")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator(".result")).to_contain_text("Connection works.")
    expect(page.locator(".steps li")).to_have_count(2)
    expect(page.locator('.steps li[data-step="connect"]')).to_contain_text("connect: ok — 220")
    expect(page.locator('.steps li[data-step="ehlo"]')).to_contain_text("ehlo: ok — 250")
