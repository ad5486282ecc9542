"""Segments, newsletters and people in a real browser: a segment built with the builder, a
newsletter to it sent through the confirmation page, the jobs and the worker carrying it to
the SMTP server its type routes to, and the campaign page counting it by state and server."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest
from tests.browser.conftest import Workspace, expect
from tests.browser.test_deliveries_and_overview import configure_example
from tests.browser.test_session_and_access import UNLABELLED
from tests.conftest import SECRET_KEY

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.localsmtp import LocalSMTPServer
from postyard.routing import Plan
from postyard.secretbox import SecretBox
from postyard.services import people
from postyard.services.runtime import Runtime
from postyard.services.workspaces import Caller


def add_people(
    settings: Settings, database: Database, workspace: Workspace, run: str
) -> dict[str, str]:
    """Three people, two of them on the pro plan; their addresses by id."""
    runtime = Runtime(settings, SecretBox(SECRET_KEY))
    caller = Caller(workspace.id, Plan.PREMIUM, 0)
    addresses = {}
    with database.session() as session:
        for index, plan in enumerate(("pro", "pro", "free")):
            person_id = f"{run}-{index}"
            addresses[person_id] = f"{person_id}@example.com"
            people.identify(
                session,
                runtime,
                caller,
                people.Identify(
                    person_id,
                    {"email": addresses[person_id], "plan": plan, "first_name": f"P{index}"},
                ),
            )
    return addresses


def go(page: Any, name: str) -> None:
    """Follow a link of the main navigation."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()


def test_a_newsletter_to_a_segment_is_sent_and_counted_by_server(
    signed_in: Any,
    workspace: Workspace,
    ui_settings: Settings,
    ui_database: Database,
    smtp: dict[str, LocalSMTPServer],
) -> None:
    page = signed_in
    configure_example(ui_database, workspace, smtp)
    run = uuid.uuid4().hex[:8]
    addresses = add_people(ui_settings, ui_database, workspace, run)

    # A segment from the builder.
    go(page, "Segments")
    page.get_by_role("link", name="New segment").click()
    page.get_by_label("Name").fill("Pro plan")
    page.get_by_label("Attribute 1").fill("plan")
    page.get_by_label("Comparison 1").select_option("eq")
    page.get_by_label("Value 1").fill("pro")
    page.get_by_role("button", name="Create segment").click()
    expect(page.get_by_role("status")).to_contain_text("2 people are in it")
    expect(page.locator("#member-count")).to_have_text("2")

    # A newsletter to it, previewed for one of them.
    go(page, "Campaigns")
    page.get_by_role("link", name="New campaign").click()
    page.get_by_role("link", name="Newsletters").click()
    page.get_by_label("Name").fill(f"News {run}")
    page.get_by_label("Audience").select_option(label="Pro plan")
    page.get_by_label("From").fill("Acme <news@acme.example>")
    page.get_by_label("Subject").fill(f"{run} for {{{{ customer.first_name }}}}")
    page.get_by_label("Text body").fill("Hello {{ customer.first_name | upcase }}")
    page.get_by_label("Preview for person id").fill(f"{run}-1")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#preview-subject")).to_have_text(f"{run} for P1")
    expect(page.locator("#preview-text")).to_have_text("Hello P1")
    expect(page.get_by_label("Subject")).to_have_value(f"{run} for {{{{ customer.first_name }}}}")
    page.get_by_role("button", name="Create campaign").click()
    expect(page.get_by_role("status")).to_contain_text("Campaign created as a draft")

    # The confirmation states the audience and the server that will carry it.
    page.get_by_role("link", name="Send…").click()
    expect(page.locator("#send-size")).to_have_text("2 people, 2 with an email address")
    expect(page.locator("#send-server")).to_have_text("smtp-news (specific)")
    page.get_by_role("button", name="Send to 2 addresses").click()
    expect(page).to_have_url(re.compile(r"/campaigns/\d+\?notice=sending$"))

    # The jobs queue it, the worker sends it; the page reloads itself until it is done.
    deadline = time.monotonic() + 20
    while True:
        sent = page.locator('#by-status tr[data-state="sent"] td')
        if (sent.count() and sent.inner_text() == "2") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
        page.reload()
    expect(page.locator("#campaign-state")).to_have_text("sent")
    expect(page.locator('#by-status tr[data-state="sent"] td')).to_have_text("2")
    expect(page.locator("#by-server tbody tr")).to_have_count(1)
    expect(page.locator("#by-server tbody tr .server")).to_have_text("smtp-news")
    expect(page.locator("#by-server tbody tr td")).to_have_text("2")
    received = {m.rcpt_tos: m.subject for m in smtp["smtp-news"].messages if run in m.subject}
    assert received == {
        (addresses[f"{run}-0"],): f"{run} for P0",
        (addresses[f"{run}-1"],): f"{run} for P1",
    }

    go(page, "Campaigns")
    row = page.locator("tr[data-campaign]", has_text=f"News {run}")
    expect(row).to_contain_text("Newsletters")
    expect(row).to_contain_text("sent")

    # The person's page shows the segment and the delivery.
    go(page, "People")
    page.get_by_label("Person id or email").fill(addresses[f"{run}-1"])
    page.get_by_role("button", name="Find").click()
    page.get_by_role("link", name=f"{run}-1").click()
    expect(page.locator("#memberships")).to_contain_text("Pro plan")
    expect(page.locator("tr[data-delivery]")).to_contain_text(f"{run} for P1")


@pytest.mark.parametrize("width", [1280, 390])
def test_the_new_pages_label_their_controls_and_fit_the_width(
    signed_in: Any,
    workspace: Workspace,
    ui_settings: Settings,
    ui_database: Database,
    smtp: dict[str, LocalSMTPServer],
    width: int,
) -> None:
    page = signed_in
    page.set_viewport_size({"width": width, "height": 900})
    configure_example(ui_database, workspace, smtp)
    run = uuid.uuid4().hex[:8]
    add_people(ui_settings, ui_database, workspace, run)
    page.goto("/segments/new")
    page.get_by_label("Name").fill("Everyone with an email")
    page.get_by_label("Attribute 1").fill("email")
    page.get_by_label("Comparison 1").select_option("exists")
    page.get_by_role("button", name="Create segment").click()
    segment = page.url.split("?")[0]
    page.goto("/campaigns/new?type=triggered_broadcast")
    page.get_by_label("Name").fill("Flash")
    page.get_by_label("From").fill("Acme <news@acme.example>")
    page.get_by_label("Subject").fill("Sale")
    page.get_by_label("Text body").fill("Sale: {{ trigger.sale }}")
    page.get_by_role("button", name="Create campaign").click()
    campaign = page.url.split("?")[0]
    for path in (
        "/campaigns",
        "/campaigns/new",
        *(f"/campaigns/new?type={kind}" for kind in ("segment_triggered", "event_triggered")),
        campaign,
        f"{campaign}/edit",
        "/segments",
        "/segments/new",
        segment,
        f"{segment}/edit",
        f"{segment}/delete",
        f"{campaign}/delete",
        "/people",
        f"/people/{run}-0",
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


def test_the_segment_editor_counts_members_as_the_conditions_change(
    signed_in: Any,
    workspace: Workspace,
    ui_settings: Settings,
    ui_database: Database,
) -> None:
    page = signed_in
    run = uuid.uuid4().hex[:8]
    add_people(ui_settings, ui_database, workspace, run)
    page.goto("/segments/new")
    count = page.locator("#member-count")
    expect(count).to_have_text("See how many people match before saving.")
    page.get_by_label("Attribute 1").fill("plan")
    page.get_by_label("Comparison 1").select_option("eq")
    page.get_by_label("Value 1").fill("pro")
    expect(count).to_have_text("2 people match these conditions now.")  # no button pressed
    page.get_by_label("Value 1").fill("free")
    expect(count).to_have_text("1 person matches these conditions now.")
    page.get_by_label("Conditions as JSON").fill('{"nope": 1}')
    expect(count).to_contain_text('Cannot count yet: $: unknown condition "nope"')
    page.get_by_label("Conditions as JSON").fill("")
    expect(count).to_have_text("1 person matches these conditions now.")
    # The button works as a plain form post too: the page comes back with the values kept.
    page.get_by_role("button", name="Count members").click()
    expect(page.locator("#member-count strong")).to_have_text("1")
    expect(page.get_by_label("Value 1")).to_have_value("free")
    page.get_by_label("Name").fill("Free plan")
    page.get_by_role("button", name="Create segment").click()
    expect(page.get_by_role("status")).to_contain_text("1 person is in it")
