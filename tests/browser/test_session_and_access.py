"""Signing in and out in Chromium, the session cookie's flags, the wall between workspaces,
and the quality bar every page must meet: labelled controls, keyboard use, 390 px wide."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from tests.browser.conftest import Workspace, expect
from tests.conftest import SECRET_KEY

from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import ApiKey, SmtpServer
from postyard.delivery.outbox import Letter, enqueue
from postyard.routing import Plan, Role
from postyard.secretbox import SecretBox
from postyard.services import smtp_servers
from postyard.services.runtime import Runtime
from postyard.services.smtp_servers import Security, ServerFields
from postyard.services.workspaces import Caller

# Every form control without a label (or a button without a name), as HTML.
UNLABELLED = """() => [...document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, button')]
  .filter(el => el.tagName === 'BUTTON'
    ? !(el.textContent.trim() || el.getAttribute('aria-label'))
    : !((el.labels && el.labels.length) || el.getAttribute('aria-label')
        || el.getAttribute('aria-labelledby')))
  .map(el => el.outerHTML)"""


def _runtime(database: Database) -> Runtime:
    return Runtime(
        Settings(database_url=database.url, secret_key=SECRET_KEY), SecretBox(SECRET_KEY)
    )


def add_server(database: Database, workspace: Workspace, name: str, **fields: Any) -> int:
    caller = Caller(workspace.id, Plan.PREMIUM, 0)
    values = {"host": "127.0.0.1", "port": 2525, "security": Security.NONE, **fields}
    with database.session() as session:
        server = smtp_servers.create_server(
            session, caller, ServerFields(name=name, **values), _runtime(database)
        )
        session.flush()
        return server.id


def test_sign_in_sets_a_safe_cookie_and_sign_out_ends_the_session(
    page: Any, context: Any, workspace: Workspace
) -> None:
    page.goto("/smtp")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fsmtp$"))

    page.get_by_label("API key").fill("pk_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("This API key is not valid or has been revoked.")
    expect(page.get_by_label("API key")).to_have_value("")

    page.get_by_label("API key").fill(workspace.api_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/smtp$"))  # back where the visit began

    [cookie] = [c for c in context.cookies() if c["name"] == "postyard_session"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False  # served over plain HTTP here; Secure over HTTPS
    assert workspace.api_key not in cookie["value"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie["value"])  # a random token, nothing else

    # A copy of the cookie (another browser, a stolen one) works until the session ends...
    copy = context.browser.new_context(base_url=page.url.split("/smtp")[0])
    copy.add_cookies([{**cookie}])
    elsewhere = copy.new_page()
    elsewhere.goto("/smtp")
    expect(elsewhere).to_have_url(re.compile(r"/smtp$"))

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login\?signed_out=1$"))
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    assert not [c for c in context.cookies() if c["name"] == "postyard_session"]
    page.goto("/deliveries")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fdeliveries$"))
    # ...and is refused as soon as this browser signs out.
    elsewhere.goto("/smtp")
    expect(elsewhere).to_have_url(re.compile(r"/login\?next=%2Fsmtp&expired=1$"))
    copy.close()


def test_revoking_the_api_key_ends_its_web_sessions(
    signed_in: Any, workspace: Workspace, ui_database: Database
) -> None:
    page = signed_in
    with ui_database.session() as session:
        session.execute(
            update(ApiKey).where(ApiKey.workspace_id == workspace.id).values(revoked_at=utcnow())
        )
    page.goto("/smtp")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fsmtp&expired=1$"))
    expect(page.get_by_role("status")).to_contain_text("Sign in again")


def test_another_workspaces_objects_are_not_found(
    signed_in: Any,
    workspace: Workspace,
    new_workspace: Callable[..., Workspace],
    ui_database: Database,
) -> None:
    page = signed_in
    other = new_workspace(name="Other")
    theirs = add_server(ui_database, other, "their-smtp")
    with ui_database.session() as session:
        delivery_id = enqueue(
            session,
            other.id,
            Letter("newsletter", "bob@example.com", "news@other.example", "Hi", "Hello"),
            utcnow(),
            timedelta(days=1),
        ).id

    for path in (
        f"/smtp/{theirs}",
        f"/smtp/{theirs}/delete",
        f"/deliveries/{delivery_id}",
        "/smtp/2147483647",
        "/smtp/99999999999",
        "/deliveries/not-a-number",
    ):
        response = page.goto(path)
        assert response is not None and response.status == 404, path
        expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
        expect(page.locator("body")).not_to_contain_text("their-smtp")

    # A form posted at their server, with this session's own valid CSRF token: 404, no change.
    page.goto("/smtp")
    token = page.locator('input[name="csrf_token"]').first.input_value()
    for action, form in (
        ("role", {"role": "none"}),
        ("delete", {}),
        ("send-test", {"campaign_type": "newsletter"}),
    ):
        response = page.request.post(
            f"/smtp/{theirs}/{action}", form={"csrf_token": token, **form}, max_redirects=0
        )
        assert response.status == 404, action
    with ui_database.session() as session:
        server = session.get(SmtpServer, theirs)
        assert server is not None and server.role == "all_emails"


def test_a_post_without_the_sessions_csrf_token_is_refused(
    signed_in: Any, workspace: Workspace, ui_database: Database
) -> None:
    page = signed_in
    server_id = add_server(ui_database, workspace, "smtp-main")
    for token in ("", "forged"):
        response = page.request.post(
            f"/smtp/{server_id}/delete", form={"csrf_token": token}, max_redirects=0
        )
        assert response.status == 403
    with ui_database.session() as session:
        assert session.scalar(select(SmtpServer.id).where(SmtpServer.id == server_id))


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_labels_its_controls_and_fits_the_width(
    signed_in: Any, workspace: Workspace, ui_database: Database, width: int
) -> None:
    page = signed_in
    page.set_viewport_size({"width": width, "height": 900})
    server_id = add_server(ui_database, workspace, "smtp-main", username="u", password="p")
    add_server(ui_database, workspace, "smtp-news", role=Role.NEWSLETTERS)
    with ui_database.session() as session:
        delivery_id = enqueue(
            session,
            workspace.id,
            Letter("newsletter", "bob@example.com", "news@acme.example", "Hi", "Hello"),
            utcnow(),
            timedelta(days=1),
        ).id
    for path in (
        "/overview",
        "/smtp",
        "/smtp/new",
        f"/smtp/{server_id}",
        f"/smtp/{server_id}/delete",
        "/deliveries",
        f"/deliveries/{delivery_id}",
    ):
        page.goto(path)
        assert page.evaluate(UNLABELLED) == [], path
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} is {overflow}px wider than {width}px"
        spilling = page.evaluate(
            "() => [...document.querySelectorAll('.panel')]"
            ".filter(el => el.scrollWidth > el.clientWidth).map(el => el.className)"
        )
        assert spilling == [], f"{path}: content wider than its panel"
    page.context.clear_cookies()
    page.goto("/login")
    assert page.evaluate(UNLABELLED) == []


def test_sign_in_and_a_role_change_with_the_keyboard_alone(
    page: Any, workspace: Workspace, ui_database: Database
) -> None:
    add_server(ui_database, workspace, "smtp-main")
    news = add_server(ui_database, workspace, "smtp-news")
    page.goto("/login")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "api-key":
            break
    page.keyboard.type(workspace.api_key)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/overview$"))

    page.goto("/smtp")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == f"role-{news}":
            break
    else:
        focused = page.evaluate("() => document.activeElement.outerHTML")
        pytest.fail(f"Tab never reached the role of smtp-news; focus is on {focused}")
    select = page.get_by_label("Role of smtp-news")
    expect(select).to_be_focused()
    # Typing a label's first letters picks the option, as in any native drop-down.
    page.keyboard.type("Newsl")
    expect(select).to_have_value("newsletters")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Save the role of smtp-news")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text("“smtp-news” is now Newsletters.")
