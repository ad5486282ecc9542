"""Campaign, segment and people pages over plain HTTP, on both database backends: forms with
bad input come back with the error by the field and store nothing, the preview renders for a
chosen person, and another workspace's objects are a 404."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from tests.conftest import SECRET_KEY
from tests.web.conftest import Browserless, WebFactory

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import BroadcastTrigger, Campaign, Segment
from postyard.routing import Plan
from postyard.secretbox import SecretBox
from postyard.services import people
from postyard.services.runtime import Runtime
from postyard.services.workspaces import Caller

NEWSLETTER = {
    "name": "May news",
    "audience": "all",
    "from": "Acme <news@acme.example>",
    "reply_to": "",
    "subject": "Hello {{ customer.first_name | default: 'there' }}",
    "text": "Hi {{ customer.first_name }}",
    "html": "",
}


def person(
    settings: Settings, database: Database, web: Browserless, person_id: str, **attributes: Any
) -> None:
    runtime = Runtime(settings, SecretBox(SECRET_KEY))
    with database.session() as session:
        people.identify(
            session,
            runtime,
            Caller(web.workspace_id, Plan.PREMIUM, 0),
            people.Identify(person_id, attributes),
        )


def count(database: Database, model: Any, workspace_id: int) -> int:
    with database.session() as session:
        return session.scalar(
            select(func.count()).select_from(model).where(model.workspace_id == workspace_id)
        )


def create_newsletter(web: Browserless, **fields: str) -> int:
    response = web.submit("/campaigns/new?type=newsletter", **{**NEWSLETTER, **fields})
    assert response.status_code == 303, response.text
    return int(response.headers["location"].split("/")[2].split("?")[0])


def test_a_campaign_form_with_bad_input_comes_back_with_errors_and_stores_nothing(
    web: Browserless, database: Database
) -> None:
    response = web.submit(
        "/campaigns/new?type=newsletter",
        **{
            **NEWSLETTER,
            "from": "not an address",
            "subject": "Line one\r\nBcc: victim@example.com",
            "text": "",
            "audience": "999999",
        },
    )
    assert response.status_code == 422
    text = response.text
    for name in ("from", "subject", "text", "audience"):
        assert f'id="f-{name}-error"' in text, name
    assert 'value="not an address"' in text and 'value="May news"' in text

    response = web.submit(
        "/campaigns/new?type=event_triggered",
        **{**NEWSLETTER, "event_name": "signed_up", "frequency": "every", "filter": "{nope"},
    )
    assert response.status_code == 422
    assert 'id="f-filter-error"' in response.text and "not valid JSON" in response.text
    assert "{nope</textarea>" in response.text

    response = web.submit(
        "/campaigns/new?type=newsletter", **{**NEWSLETTER, "subject": "Hi {{ customer.name "}
    )
    assert response.status_code == 422
    assert 'id="f-subject-error"' in response.text and "Liquid error at line 1" in response.text
    assert count(database, Campaign, web.workspace_id) == 0


def test_the_preview_renders_for_a_person_and_says_why_it_cannot(
    web: Browserless, settings: Settings, database: Database
) -> None:
    person(settings, database, web, "u1", email="ann@example.com", first_name="Ann")
    person(settings, database, web, "u2", email="bob@example.com")
    fields = {**NEWSLETTER, "action": "preview", "text": "Dear {{ customer.first_name }}"}
    response = web.submit("/campaigns/new?type=newsletter", **fields, preview_person="u1")
    assert response.status_code == 200
    assert '<dd id="preview-subject">Hello Ann</dd>' in response.text
    assert "Dear Ann</pre>" in response.text

    fields["subject"] = "Hi {{ customer.first_name | capitalize }}"
    response = web.submit("/campaigns/new?type=newsletter", **fields, preview_person="u2")
    assert 'id="preview-error"' in response.text
    assert "The subject field cannot be rendered for this person" in response.text
    assert "needs a value" in response.text

    response = web.submit("/campaigns/new?type=newsletter", **fields, preview_person="nobody")
    assert 'id="f-preview_person-error"' in response.text
    assert count(database, Campaign, web.workspace_id) == 0


def test_a_newsletter_send_page_states_the_audience_and_the_server(
    web: Browserless, settings: Settings, database: Database
) -> None:
    person(settings, database, web, "u1", email="ann@example.com")
    person(settings, database, web, "u2")
    campaign_id = create_newsletter(web)
    page = web.get(f"/campaigns/{campaign_id}/send")
    assert page.status_code == 200
    assert "2 people, 1 with an email address" in page.text
    assert 'id="send-server"' in page.text
    response = web.submit(f"/campaigns/{campaign_id}/send")
    assert response.status_code == 303
    with database.session() as session:
        assert session.get_one(Campaign, campaign_id).state in {"scheduled", "sending", "sent"}
    response = web.submit(f"/campaigns/{campaign_id}/send")
    assert response.status_code == 409 and "a newsletter is sent once" in response.text


def test_a_broadcast_trigger_with_bad_data_stores_nothing(
    web: Browserless, database: Database
) -> None:
    response = web.submit(
        "/campaigns/new?type=triggered_broadcast", **{**NEWSLETTER, "name": "Flash"}
    )
    assert response.status_code == 303
    campaign_id = int(response.headers["location"].split("/")[2].split("?")[0])
    response = web.submit(f"/campaigns/{campaign_id}/trigger", data='{"sale": 1}')
    assert response.status_code == 409 and "activate it" in response.text
    assert web.submit(f"/campaigns/{campaign_id}/state", state="active").status_code == 303
    for data in ("[1, 2]", "{bad", '{"x": NaN}'):
        response = web.submit(f"/campaigns/{campaign_id}/trigger", data=data)
        assert response.status_code == 422, data
        assert 'id="f-data-error"' in response.text
    with database.session() as session:
        assert not session.scalar(
            select(func.count()).where(BroadcastTrigger.campaign_id == campaign_id)
        )
    response = web.submit(f"/campaigns/{campaign_id}/trigger", data='{"sale": 1}')
    assert response.status_code == 303 and "trigger=" in response.headers["location"]


def test_another_workspaces_campaigns_are_a_404_and_stay_unchanged(
    make_web: WebFactory, database: Database
) -> None:
    web = make_web()
    theirs = make_web()
    campaign_id = create_newsletter(theirs, name="their-news")
    for path in (
        f"/campaigns/{campaign_id}",
        f"/campaigns/{campaign_id}/edit",
        f"/campaigns/{campaign_id}/send",
        "/campaigns/2147483648",
    ):
        response = web.get(path)
        assert response.status_code == 404, path
        assert "their-news" not in response.text
    for action, fields in (
        ("/edit", {**NEWSLETTER, "name": "mine-now"}),
        ("/edit", {**NEWSLETTER, "action": "preview", "preview_person": "x"}),
        ("/state", {"state": "active"}),
        ("/send", {}),
        ("/trigger", {"data": "{}"}),
    ):
        response = web.submit(f"/campaigns/{campaign_id}{action}", **fields)
        assert response.status_code == 404, action
    assert "their-news" not in web.get("/campaigns").text
    with database.session() as session:
        campaign = session.get_one(Campaign, campaign_id)
        assert (campaign.name, campaign.state) == ("their-news", "draft")
    assert count(database, Segment, web.workspace_id) == 0


def test_a_segment_from_the_builder_counts_its_members_and_lists_them(
    web: Browserless, settings: Settings, database: Database
) -> None:
    person(settings, database, web, "u1", email="ann@example.com", plan="pro", seats=12)
    person(settings, database, web, "u2", email="bob@example.com", plan="free", seats=2)
    response = web.submit(
        "/segments/new",
        name="Big pro",
        combine="and",
        c1_field="plan",
        c1_operator="eq",
        c1_value="pro",
        c2_field="seats",
        c2_operator="gte",
        c2_value="10",
        conditions="",
    )
    assert response.status_code == 303, response.text
    page = web.get(response.headers["location"])
    assert '<strong id="member-count">1</strong>' in page.text
    assert "ann@example.com" in page.text and "bob@example.com" not in page.text
    listing = web.get("/segments").text
    assert "Big pro" in listing and '<td data-label="Members" class="num members">1</td>' in listing
    person_page = web.get("/people/u1").text
    assert "Big pro" in person_page and "seats" in person_page
    assert web.get("/people?q=ANN@example.com").text.count("/people/u1") == 1
    assert web.get("/people?q=u2", follow_redirects=False).headers["location"] == "/people/u2"


def test_a_segment_form_with_bad_conditions_points_at_the_node_and_stores_nothing(
    web: Browserless, database: Database
) -> None:
    tree = (
        '{"and": [{"attribute": {"field": "plan", "operator": "eq", "value": "pro"}}, {"nope": 1}]}'
    )
    response = web.submit("/segments/new", name="Bad", combine="and", conditions=tree)
    assert response.status_code == 422
    assert 'id="f-conditions-error"' in response.text
    assert "$.and[1]: unknown condition &#34;nope&#34;</p>" in response.text
    assert "{&#34;nope&#34;: 1}]}</textarea>" in response.text

    response = web.submit(
        "/segments/new",
        name="Bad rows",
        combine="or",
        c1_field="plan",
        c1_operator="eq",
        c1_value="pro",
        c2_field="",
        c2_operator="eq",
        c2_value="x",
        c3_field="seats",
        c3_operator="contains",
        c3_value="",
        conditions="",
    )
    assert response.status_code == 422
    assert 'id="f-c2_field-error"' in response.text

    response = web.submit(
        "/segments/new",
        name="Bad rows",
        combine="or",
        c1_field="plan",
        c1_operator="gt",
        c1_value="pro",
        c3_field="seats",
        c3_operator="nonsense",
        c3_value="1",
        conditions="",
    )
    assert response.status_code == 422
    assert 'id="f-c3_operator-error"' in response.text and "$.or[1].attribute.operator" in (
        response.text
    )
    assert 'value="Bad rows"' in response.text
    response = web.submit("/segments/new", name="", combine="and", conditions="{oops")
    assert response.status_code == 422
    assert 'id="f-name-error"' in response.text and 'id="f-conditions-error"' in response.text
    assert count(database, Segment, web.workspace_id) == 0


def test_another_workspaces_segments_and_people_are_a_404_and_stay_unchanged(
    make_web: WebFactory, settings: Settings, database: Database
) -> None:
    web = make_web()
    theirs = make_web()
    person(settings, database, theirs, "their-person", email="their@example.com")
    response = theirs.submit(
        "/segments/new",
        name="their-segment",
        combine="and",
        conditions='{"attribute": {"field": "email", "operator": "exists"}}',
    )
    segment_id = int(response.headers["location"].split("/")[2].split("?")[0])
    for path in (
        f"/segments/{segment_id}",
        f"/segments/{segment_id}/edit",
        "/people/their-person",
    ):
        response = web.get(path)
        assert response.status_code == 404, path
        assert "their-segment" not in response.text and "their@example.com" not in response.text
    response = web.submit(
        f"/segments/{segment_id}/edit",
        name="mine",
        combine="and",
        conditions='{"not": {"attribute": {"field": "email", "operator": "exists"}}}',
    )
    assert response.status_code == 404
    found = web.get("/people?q=their@example.com").text
    assert "No person has the email address" in found and "their-person" not in found
    assert "their-segment" not in web.get("/segments").text
    with database.session() as session:
        assert session.get_one(Segment, segment_id).name == "their-segment"


def test_the_new_pages_forbid_scripts_and_framing(web: Browserless) -> None:
    campaign_id = create_newsletter(web)
    for path in (
        "/campaigns",
        "/campaigns/new",
        "/campaigns/new?type=event_triggered",
        f"/campaigns/{campaign_id}",
        f"/campaigns/{campaign_id}/edit",
        f"/campaigns/{campaign_id}/send",
        "/segments",
        "/segments/new",
        "/people",
    ):
        response = web.get(path)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "'unsafe-inline'" not in policy
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", response.text, re.S)
        if path == "/segments/new":
            # The live member count: one file of our own, never inline script.
            assert "script-src 'self'" in policy
            assert scripts == [(' src="/static/segment-count.js" defer', "")]
        else:
            assert "script-src" not in policy and not scripts, path
