"""The admin UI's later additions over plain HTTP, on both database backends: each delivery's
attempts, the segment editor's count before saving and its builder read back, a broadcast's
recipients and a newsletter's schedule from their forms, deleting campaigns and segments,
the HTML 404 for unknown pages, and the overview's use of its index."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from tests.web.conftest import Browserless, WebFactory
from tests.web.test_campaign_pages import NEWSLETTER, create_newsletter, person

from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import BroadcastTrigger, Campaign, Delivery, Segment
from postyard.delivery import outbox
from postyard.delivery.outbox import Letter, Outcome
from postyard.delivery.policy import Status
from postyard.routing import Plan
from postyard.services import overview
from postyard.services.workspaces import Caller

GOLD = {"attribute": {"field": "plan", "operator": "eq", "value": "gold"}}


def bearer(web: Browserless) -> dict[str, str]:
    return {"Authorization": f"Bearer {web.api_key}"}


def queue_for(database: Database, workspace_id: int, campaign_id: int | None = None) -> int:
    with database.session() as session:
        return outbox.enqueue(
            session,
            workspace_id,
            Letter(
                "newsletter",
                "bob@example.com",
                "news@acme.example",
                "Hi",
                "Hello",
                campaign_id=campaign_id,
            ),
            utcnow(),
            timedelta(days=1),
        ).id


def attempt(database: Database, delivery_id: int, outcome: Outcome) -> None:
    """One pass of the worker over `delivery_id`: claim it, record `outcome`."""
    now = utcnow()
    with database.session() as session:
        session.execute(
            update(Delivery).where(Delivery.id == delivery_id).values(next_attempt_at=now)
        )
    with database.session() as session:
        claimed = outbox.claim(session, "w1", 1000, now, timedelta(minutes=1))
        assert delivery_id in {c.id for c in claimed}
        outbox.record(session, "w1", [outcome], now)


# ------------------------------------------------------------------ 1. attempts


def test_every_attempt_is_kept_and_shown_in_the_api_and_on_the_page(
    make_web: WebFactory, database: Database
) -> None:
    web, theirs = make_web(), make_web()
    server = web.submit(
        "/smtp/new",
        name="smtp-main",
        host="smtp.example.com",
        port="587",
        security="starttls",
        max_connections="4",
        role="",
    )
    server_id = int(server.headers["location"].split("server=")[1].split("#")[0])
    delivery_id = queue_for(database, web.workspace_id)
    later = utcnow() + timedelta(minutes=5)
    attempt(
        database,
        delivery_id,
        Outcome(
            delivery_id,
            Status.DEFERRED,
            later,
            server_id,
            "fallback",
            "421 4.3.2 Try later",
            "421 4.3.2 Try later",
        ),
    )
    attempt(
        database,
        delivery_id,
        Outcome(
            delivery_id,
            Status.SENT,
            utcnow(),
            server_id,
            "fallback",
            "250 2.0.0 Ok: queued as ABC",
            sent_at=utcnow(),
        ),
    )
    suppressed_id = queue_for(database, web.workspace_id)
    attempt(
        database,
        suppressed_id,
        Outcome(suppressed_id, Status.SUPPRESSED, utcnow(), last_error="on the list"),
    )

    body = web.get(f"/v1/deliveries/{delivery_id}", headers=bearer(web)).json()
    assert body["attempts"] == 2 and body["status"] == "sent"
    history = body["attempt_history"]
    assert [(a["status"], a["reply_code"], a["smtp_server_id"], a["via"]) for a in history] == [
        ("deferred", 421, server_id, "fallback"),
        ("sent", 250, server_id, "fallback"),
    ]
    assert history[0]["reply"] == "421 4.3.2 Try later" and history[0]["attempted_at"]
    suppressed = web.get(f"/v1/deliveries/{suppressed_id}", headers=bearer(web)).json()
    assert suppressed["attempt_history"] == []
    assert theirs.get(f"/v1/deliveries/{delivery_id}", headers=bearer(theirs)).status_code == 404

    page = web.get(f"/deliveries/{delivery_id}").text
    table = page[page.index('id="attempts"') :]
    assert table.count("<tr>") == 3  # the head and two attempts
    assert "421 4.3.2 Try later" in table and "250 2.0.0 Ok: queued as ABC" in table
    assert f'<a href="/smtp/{server_id}">smtp-main</a>' in table
    assert (
        "No attempt yet: a suppressed message is never sent"
        in web.get(f"/deliveries/{suppressed_id}").text
    )


# ------------------------------------------------------------------ 2. segment counts


def test_the_member_count_before_saving_stores_nothing(
    make_web: WebFactory, settings: Settings, database: Database
) -> None:
    web, theirs = make_web(), make_web()
    person(settings, database, web, "u1", plan="gold")
    person(settings, database, web, "u2", plan="gold")
    person(settings, database, web, "u3", plan="free")
    person(settings, database, theirs, "t1", plan="gold")

    answer = web.post("/v1/segments/preview", json={"conditions": GOLD}, headers=bearer(web))
    assert (answer.status_code, answer.json()) == (200, {"member_count": 2})
    answer = web.post(
        "/v1/segments/preview",
        json={"conditions": {"or": [GOLD, {"event": {"name": "paid", "within_days": 7}}]}},
        headers=bearer(web),
    )
    assert answer.json() == {"member_count": 2}
    answer = web.post("/v1/segments/preview", json={"conditions": {"nope": 1}}, headers=bearer(web))
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_conditions"
    answer = web.post("/v1/segments/preview", json={}, headers=bearer(web))
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_request"

    fields = {
        "name": "",
        "combine": "and",
        "c1_field": "plan",
        "c1_operator": "eq",
        "c1_value": "gold",
        "conditions": "",
    }
    page = web.submit("/segments/new", action="count", **fields)
    assert page.status_code == 200
    assert "<strong>2</strong> people match these conditions now." in page.text
    assert 'value="gold"' in page.text and 'id="f-name-error"' not in page.text
    page = web.submit(
        "/segments/new", action="count", **{**fields, "c1_operator": "gt", "c1_value": "[1]"}
    )
    assert page.status_code == 200  # "[1]" is text for the builder: nobody's plan is above it
    page = web.submit("/segments/new", action="count", **{**fields, "conditions": "{oops"})
    assert page.status_code == 422 and 'id="f-conditions-error"' in page.text

    answer = web.submit("/segments/count", **fields)
    assert (answer.status_code, answer.json()) == (200, {"member_count": 2})
    answer = web.submit("/segments/count", **{**fields, "c1_operator": "nonsense"})
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "c1_operator"
    assert web.post("/segments/count", data={**fields, "csrf_token": "forged"}).status_code == 403
    with database.session() as session:
        assert not session.scalar(
            select(func.count()).where(Segment.workspace_id == web.workspace_id)
        )


def test_editing_a_segment_puts_a_simple_tree_back_in_the_builder(
    web: Browserless, database: Database
) -> None:
    simple = {
        "or": [
            GOLD,
            {"attribute": {"field": "seats", "operator": "in", "value": [1, 2]}},
            {"attribute": {"field": "email", "operator": "exists"}},
        ]
    }
    nested = {"not": GOLD}
    ids = []
    for name, tree in (("Simple", simple), ("Nested", nested), ("One", GOLD)):
        answer = web.post(
            "/v1/segments", json={"name": name, "conditions": tree}, headers=bearer(web)
        )
        ids.append(answer.json()["id"])
    page = web.get(f"/segments/{ids[0]}/edit").text
    for value in (
        'value="plan"',
        'value="gold"',
        'value="seats"',
        'value="1, 2"',
        'value="email"',
        '<option value="or" selected>',
        '<option value="exists" selected>',
    ):
        assert value in page, value
    assert 'id="builder-note"' not in page
    assert '<textarea id="f-conditions" name="conditions" rows="10"' in page
    assert "></textarea>" in page  # the JSON field is left empty: the builder holds the tree
    # Saved back from the builder, the tree is the same.
    response = web.submit(
        f"/segments/{ids[0]}/edit",
        name="Simple",
        combine="or",
        c1_field="plan",
        c1_operator="eq",
        c1_value="gold",
        c2_field="seats",
        c2_operator="in",
        c2_value="1, 2",
        c3_field="email",
        c3_operator="exists",
        c3_value="",
        conditions="",
    )
    assert response.status_code == 303
    with database.session() as session:
        assert session.get_one(Segment, ids[0]).conditions == simple

    page = web.get(f"/segments/{ids[1]}/edit").text
    assert 'id="builder-note"' in page and "&#34;not&#34;" in page
    page = web.get(f"/segments/{ids[2]}/edit").text
    assert 'value="gold"' in page and 'id="builder-note"' not in page


# ------------------------------------------------------------------ 3. campaigns


def broadcast(web: Browserless) -> int:
    response = web.submit(
        "/campaigns/new?type=triggered_broadcast", **{**NEWSLETTER, "name": "Flash"}
    )
    campaign_id = int(response.headers["location"].split("/")[2].split("?")[0])
    assert web.submit(f"/campaigns/{campaign_id}/state", state="active").status_code == 303
    return campaign_id


@pytest.mark.parametrize(
    ("send_to", "listed", "stored"),
    [
        ("ids", "ada\n 42 \n\nada", {"ids": ["ada", "42"], "id_ignore_missing": True}),
        ("emails", "a@example.com\nb@example.com", {"emails": ["a@example.com", "b@example.com"]}),
        (
            "per_user_data",
            '[{"id": "ada", "data": {"coupon": "A1"}}]',
            {"per_user_data": [{"id": "ada", "data": {"coupon": "A1"}}]},
        ),
        (
            "recipients",
            '{"attribute": {"field": "plan", "operator": "eq", "value": "gold"}}',
            {"recipients": GOLD},
        ),
        ("audience", "ignored", {}),
    ],
)
def test_a_broadcast_is_triggered_for_the_recipients_of_the_form(
    web: Browserless, database: Database, send_to: str, listed: str, stored: dict[str, Any]
) -> None:
    campaign_id = broadcast(web)
    response = web.submit(
        f"/campaigns/{campaign_id}/trigger",
        data='{"sale": 1}',
        send_to=send_to,
        recipients_list=listed,
        ignore_missing="yes",
    )
    assert response.status_code == 303, response.text
    with database.session() as session:
        request = session.scalars(
            select(BroadcastTrigger.request).where(BroadcastTrigger.campaign_id == campaign_id)
        ).one()
    assert request["data"] == {"sale": 1}
    assert {k: v for k, v in request.items() if k in stored} == stored
    for form in ("ids", "emails", "per_user_data", "recipients"):
        assert (form in request) == (form in stored)


@pytest.mark.parametrize(
    ("send_to", "listed", "message"),
    [
        ("ids", " \n ", "Enter the ids to send to, one per line."),
        ("emails", "a@example.com\nnope", "line 2: "),
        ("per_user_data", '[{"id": "a", "email": "a@example.com"}]', "exactly one of id or email"),
        ("per_user_data", "[{", "This is not valid JSON"),
        ("per_user_data", "[" * 100_000 + "]" * 100_000, "This is not valid JSON"),
        ("recipients", '{"nope": 1}', "recipients: $: unknown condition"),
        ("everyone", "", None),
    ],
)
def test_a_broadcast_trigger_with_bad_recipients_stores_nothing(
    web: Browserless, database: Database, send_to: str, listed: str, message: str | None
) -> None:
    campaign_id = broadcast(web)
    response = web.submit(
        f"/campaigns/{campaign_id}/trigger", data="{}", send_to=send_to, recipients_list=listed
    )
    assert response.status_code == 422
    field = "send_to" if message is None else "recipients_list"
    assert f'id="f-{field}-error"' in response.text
    if message:
        assert message.replace('"', "&#34;") in response.text
    assert listed.strip() == "" or listed.split("\n")[0].replace('"', "&#34;") in response.text
    with database.session() as session:
        assert not session.scalar(
            select(func.count()).where(BroadcastTrigger.campaign_id == campaign_id)
        )


def test_a_newsletter_can_be_scheduled_from_its_send_page(
    web: Browserless, database: Database
) -> None:
    campaign_id = create_newsletter(web)
    response = web.submit(f"/campaigns/{campaign_id}/send", send_at="next tuesday")
    assert response.status_code == 422 and 'id="f-send_at-error"' in response.text
    assert 'value="next tuesday"' in response.text
    with database.session() as session:
        assert session.get_one(Campaign, campaign_id).state == "draft"

    response = web.submit(f"/campaigns/{campaign_id}/send", send_at="2099-01-31T09:30")
    assert response.headers["location"] == f"/campaigns/{campaign_id}?notice=scheduled"
    page = web.get(response.headers["location"]).text
    assert "The newsletter is scheduled" in page
    assert 'id="send-schedule">Scheduled to go out <time datetime="2099-01-31T09:30:00+00:00">' in (
        page
    )
    with database.session() as session:
        campaign = session.get_one(Campaign, campaign_id)
        assert (
            campaign.state == "scheduled" and campaign.send_at.isoformat() == "2099-01-31T09:30:00"
        )


def test_deleting_a_campaign_keeps_its_history_and_cancels_what_waits(
    make_web: WebFactory, database: Database
) -> None:
    web, theirs = make_web(), make_web()
    campaign_id = create_newsletter(web)
    waiting = queue_for(database, web.workspace_id, campaign_id)
    sent = queue_for(database, web.workspace_id, campaign_id)
    with database.session() as session:
        session.execute(update(Delivery).where(Delivery.id == sent).values(status="sent"))

    assert theirs.get(f"/campaigns/{campaign_id}/delete").status_code == 404
    assert theirs.submit(f"/campaigns/{campaign_id}/delete").status_code == 404
    answer = theirs.delete(f"/v1/campaigns/{campaign_id}", headers=bearer(theirs))
    assert answer.status_code == 404
    page = web.get(f"/campaigns/{campaign_id}/delete")
    assert page.status_code == 200 and "Delete “May news”?" in page.text

    with database.session() as session:
        session.execute(update(Campaign).where(Campaign.id == campaign_id).values(state="sending"))
    response = web.submit(f"/campaigns/{campaign_id}/delete")
    assert response.status_code == 409 and 'id="delete-error"' in response.text
    answer = web.delete(f"/v1/campaigns/{campaign_id}", headers=bearer(web))
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "campaign_sending"
    with database.session() as session:
        session.execute(update(Campaign).where(Campaign.id == campaign_id).values(state="sent"))

    response = web.submit(f"/campaigns/{campaign_id}/delete")
    assert response.headers["location"] == "/campaigns?notice=deleted"
    assert "The campaign was deleted." in web.get("/campaigns?notice=deleted").text
    assert web.get(f"/campaigns/{campaign_id}").status_code == 404
    with database.session() as session:
        statuses = dict(
            session.execute(
                select(Delivery.id, Delivery.status).where(Delivery.id.in_([waiting, sent]))
            ).all()
        )
    assert statuses == {waiting: "cancelled", sent: "sent"}

    other = create_newsletter(web)
    assert web.delete(f"/v1/campaigns/{other}", headers=bearer(web)).status_code == 204
    assert web.get(f"/v1/campaigns/{other}", headers=bearer(web)).status_code == 404


def test_deleting_a_segment_a_campaign_uses_says_why_not(
    make_web: WebFactory, database: Database
) -> None:
    web, theirs = make_web(), make_web()
    segment_id = web.post(
        "/v1/segments", json={"name": "Gold", "conditions": GOLD}, headers=bearer(web)
    ).json()["id"]
    campaign_id = create_newsletter(web, audience=str(segment_id))
    assert theirs.get(f"/segments/{segment_id}/delete").status_code == 404
    assert theirs.submit(f"/segments/{segment_id}/delete").status_code == 404
    assert web.get(f"/segments/{segment_id}/delete").status_code == 200

    response = web.submit(f"/segments/{segment_id}/delete")
    assert response.status_code == 409 and 'id="delete-error"' in response.text
    assert f"is used by campaign {campaign_id}" in response.text
    assert web.submit(f"/campaigns/{campaign_id}/delete").status_code == 303
    response = web.submit(f"/segments/{segment_id}/delete")
    assert response.headers["location"] == "/segments?notice=deleted"
    with database.session() as session:
        assert session.get(Segment, segment_id) is None


# ------------------------------------------------------------------ 5. unknown pages


def test_unknown_pages_are_an_html_404_for_browsers_and_json_under_v1(web: Browserless) -> None:
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    for path in ("/nope", "/segments/does-not-exist/x", "/static/nope.css"):
        response = web.get(path, headers=html)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("text/html")
        assert (
            "Not found" in response.text
            and "default-src 'none'" in (response.headers["content-security-policy"])
        )
    for path, headers in (("/v1/nope", html), ("/nope", {"Accept": "application/json"})):
        response = web.get(path, headers=headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


# ------------------------------------------------------------------ 6. overview index


def test_the_overviews_day_is_read_through_its_index(web: Browserless, database: Database) -> None:
    caller = Caller(web.workspace_id, Plan.PREMIUM, 0)
    now = utcnow()
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    event.listen(database.engine, "before_cursor_execute", capture)
    try:
        with database.session() as session:
            overview.sent_per_hour(session, caller, now - timedelta(hours=23), now)
    finally:
        event.remove(database.engine, "before_cursor_execute", capture)
    [(statement, params)] = seen
    with database.engine.connect() as connection:
        if database.engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET enable_seqscan = off")
            plan = connection.exec_driver_sql("EXPLAIN " + statement, params).all()
        else:
            plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
        connection.rollback()
    described = " ".join(str(row) for row in plan)
    assert "ix_deliveries_workspace_sent" in described, described
    assert "sent_at <" in statement.replace('"', "").replace("deliveries.", "")


def test_the_deliveries_log_filters_by_campaign_and_refuses_another_workspaces(
    web: Browserless, database: Database, make_web: WebFactory
) -> None:
    campaign_id = create_newsletter(web)
    queue_for(database, web.workspace_id, campaign_id)
    queue_for(database, web.workspace_id)
    assert web.get("/deliveries").text.count("data-delivery=") == 2

    page = web.get(f"/deliveries?campaign={campaign_id}")
    assert page.text.count("data-delivery=") == 1
    assert f'<option value="{campaign_id}" selected>' in page.text

    other = make_web()
    refused = other.get(f"/deliveries?campaign={campaign_id}")
    assert refused.status_code == 422
    assert "Choose a campaign from the list." in refused.text
