"""The four campaign types end to end: configured through the REST API, queued by the
triggers and the jobs runner, delivered by the real worker, and checked on what the real
SMTP servers received (DESIGN §8 routing, personalisation, exclusions, unsubscribe headers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from integration_helpers import add_local, set_role, subjects
from sqlalchemy import select

from postyard.api.app import create_app
from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Campaign
from postyard.localsmtp import LocalSMTPServer
from postyard.routing import Plan
from postyard.secretbox import secret_box
from postyard.services import fanout
from postyard.services.jobs import Jobs
from postyard.services.runtime import Runtime
from postyard.services.workspaces import create_workspace

Deliver = Callable[..., None]
StartSmtp = Callable[..., LocalSMTPServer]
RunJobs = Callable[..., int]
C = "/v1/campaigns"
FROM = "Acme <news@acme.example>"


@pytest.fixture
def run_jobs(database: Database, settings: Settings) -> RunJobs:
    """One `run_due` of a jobs runner, optionally at another time or in smaller batches."""

    def run(clock: Callable[[], datetime] = utcnow, batch_size: int = fanout.BATCH_SIZE) -> int:
        runtime = Runtime(settings, secret_box(settings), clock)
        return Jobs(database, runtime, batch_size=batch_size).run_due()

    return run


def person(api: TestClient, person_id: str, **attributes: Any) -> None:
    response = api.put(f"/v1/people/{person_id}", json=attributes)
    assert response.status_code in {200, 201}, response.text


def event(api: TestClient, person_id: str, name: str, **data: Any) -> None:
    response = api.post(f"/v1/people/{person_id}/events", json={"name": name, "data": data})
    assert response.status_code in {200, 201, 202}, response.text


def segment(api: TestClient, conditions: dict[str, Any], name: str = "segment") -> int:
    response = api.post("/v1/segments", json={"name": name, "conditions": conditions})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def plan_is(value: str) -> dict[str, Any]:
    return {"attribute": {"field": "plan", "operator": "eq", "value": value}}


def campaign(
    api: TestClient, campaign_type: str, subject: str | None = None, **fields: Any
) -> dict[str, Any]:
    message = {"from": FROM, "subject": subject or campaign_type, "text": "Hello."}
    message |= fields.pop("message", {})
    response = api.post(
        C, json={"name": campaign_type, "type": campaign_type, "message": message, **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


def send(api: TestClient, campaign_id: int, **body: Any) -> None:
    response = api.post(f"{C}/{campaign_id}/send", json=body)
    assert response.status_code == 202, response.text


def trigger(api: TestClient, campaign_id: int, **body: Any) -> int:
    response = api.post(f"{C}/{campaign_id}/triggers", json=body)
    assert response.status_code == 202, response.text
    return response.json()["trigger_id"]


def trigger_status(api: TestClient, campaign_id: int, trigger_id: int) -> dict[str, Any]:
    response = api.get(f"{C}/{campaign_id}/triggers/{trigger_id}")
    assert response.status_code == 200, response.text
    return response.json()


def deliveries(api: TestClient, campaign_id: int) -> list[dict[str, Any]]:
    response = api.get("/v1/deliveries", params={"campaign_id": campaign_id, "limit": 500})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def by_recipient(smtp: LocalSMTPServer) -> dict[str, list[Any]]:
    received: dict[str, list[Any]] = {}
    for message in smtp.messages:
        for recipient in message.rcpt_tos:
            received.setdefault(recipient, []).append(message)
    return received


# --- routing --------------------------------------------------------------------------------


def die_in_batch(monkeypatch: pytest.MonkeyPatch, number: int) -> Callable[..., fanout.Tally]:
    """Make the fan-out fail at its `number`th batch, as a process that died there would;
    returns the real `enqueue`, to put back for the process that takes the send over."""
    real_enqueue = fanout.enqueue
    batches = 0

    def dying(*args: Any) -> fanout.Tally:
        nonlocal batches
        batches += 1
        if batches == number:
            raise RuntimeError("the process died")
        return real_enqueue(*args)

    monkeypatch.setattr(fanout, "enqueue", dying)
    return real_enqueue


def test_each_type_goes_through_the_server_the_seed_routing_chooses(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp, run_jobs: RunJobs
) -> None:
    main, events, news = (start_smtp(name) for name in ("smtp-main", "smtp-events", "smtp-news"))
    one = add_local(api, main, role="all_emails")
    two = add_local(api, events, role="event_triggered")
    three = add_local(api, news, role="newsletters")
    pro = segment(api, plan_is("pro"))
    segment_triggered = campaign(
        api, "segment_triggered", trigger={"segment_id": pro}, state="active"
    )
    event_triggered = campaign(
        api, "event_triggered", trigger={"event_name": "signed_up"}, state="active"
    )
    newsletter = campaign(api, "newsletter", audience={"all": True})
    broadcast = campaign(api, "triggered_broadcast", state="active")
    person(api, "ann", email="ann@example.com", plan="basic")

    person(api, "ann", plan="pro")
    event(api, "ann", "signed_up")
    send(api, newsletter["id"])
    trigger(api, broadcast["id"])
    assert run_jobs() == 2
    deliver()

    assert subjects(main) == ["segment_triggered", "triggered_broadcast"]
    assert subjects(events) == ["event_triggered"]
    assert subjects(news) == ["newsletter"]
    expected = {
        segment_triggered["id"]: (one["id"], "fallback"),
        event_triggered["id"]: (two["id"], "specific"),
        newsletter["id"]: (three["id"], "specific"),
        broadcast["id"]: (one["id"], "fallback"),
    }
    for campaign_id, (server_id, via) in expected.items():
        [record] = deliveries(api, campaign_id)
        assert (record["status"], record["smtp_server_id"], record["via"]) == (
            "sent",
            server_id,
            via,
        )
        counts = api.get(f"{C}/{campaign_id}").json()["counts"]
        assert counts == {"by_status": {"sent": 1}, "by_server": {str(server_id): 1}}

    for smtp in (main, events, news):
        smtp.clear()
    set_role(api, three["id"], "none")
    second = campaign(api, "newsletter", subject="second newsletter", audience={"all": True})
    send(api, second["id"])
    run_jobs()
    deliver()

    assert subjects(main) == ["second newsletter"]
    assert subjects(news) == []
    [record] = deliveries(api, second["id"])
    assert (record["smtp_server_id"], record["via"]) == (one["id"], "fallback")


def test_five_servers_each_type_on_its_own_and_all_emails_idle(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp, run_jobs: RunJobs
) -> None:
    roles = {
        "smtp-main": "all_emails",
        "smtp-segments": "segment_triggered",
        "smtp-events": "event_triggered",
        "smtp-news": "newsletters",
        "smtp-broadcasts": "triggered_broadcasts",
    }
    servers = {name: start_smtp(name) for name in roles}
    for name, smtp in servers.items():
        add_local(api, smtp, role=roles[name])
    pro = segment(api, plan_is("pro"))
    campaign(api, "segment_triggered", trigger={"segment_id": pro}, state="active")
    campaign(api, "event_triggered", trigger={"event_name": "signed_up"}, state="active")
    newsletter = campaign(api, "newsletter", audience={"segment_id": pro})
    broadcast = campaign(api, "triggered_broadcast", audience={"segment_id": pro}, state="active")

    person(api, "ann", email="ann@example.com", plan="pro")
    event(api, "ann", "signed_up")
    send(api, newsletter["id"])
    trigger(api, broadcast["id"])
    run_jobs()
    deliver()

    assert subjects(servers["smtp-main"]) == []
    assert subjects(servers["smtp-segments"]) == ["segment_triggered"]
    assert subjects(servers["smtp-events"]) == ["event_triggered"]
    assert subjects(servers["smtp-news"]) == ["newsletter"]
    assert subjects(servers["smtp-broadcasts"]) == ["triggered_broadcast"]


# --- segment-triggered ----------------------------------------------------------------------


def test_segment_entry_sends_once_and_re_entry_sends_on_every_entry(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp()
    add_local(api, smtp)
    pro = segment(api, plan_is("pro"))
    campaign(api, "segment_triggered", subject="once", trigger={"segment_id": pro}, state="active")
    campaign(
        api,
        "segment_triggered",
        subject="every entry",
        trigger={"segment_id": pro},
        re_entry=True,
        state="active",
    )
    person(api, "ann", email="ann@example.com", plan="basic")

    for plan in ("pro", "basic", "pro", "pro", "basic", "pro"):
        person(api, "ann", plan=plan)
    deliver()

    assert subjects(smtp) == ["every entry"] * 3 + ["once"]


def test_only_an_active_campaign_sends_on_entry(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp()
    add_local(api, smtp)
    pro = segment(api, plan_is("pro"))
    draft = campaign(api, "segment_triggered", trigger={"segment_id": pro})
    paused = campaign(api, "segment_triggered", trigger={"segment_id": pro}, state="active")
    api.patch(f"{C}/{paused['id']}", json={"state": "paused"})

    person(api, "ann", email="ann@example.com", plan="pro")
    deliver()

    assert smtp.messages == []
    assert deliveries(api, draft["id"]) == deliveries(api, paused["id"]) == []


def test_include_existing_sends_to_current_members_on_activation_once(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp()
    add_local(api, smtp)
    pro = segment(api, plan_is("pro"))
    person(api, "ann", email="ann@example.com", plan="pro")
    person(api, "bob", email="bob@example.com", plan="pro")
    person(api, "cid", email="cid@example.com", plan="basic")
    person(api, "dan", plan="pro")  # no email: nothing to send to
    without = campaign(
        api, "segment_triggered", subject="new members only", trigger={"segment_id": pro}
    )
    including = campaign(
        api,
        "segment_triggered",
        subject="everyone in it",
        trigger={"segment_id": pro},
        include_existing=True,
    )
    at_creation = campaign(
        api,
        "segment_triggered",
        subject="active at creation",
        trigger={"segment_id": pro},
        include_existing=True,
        state="active",
    )

    for created in (without, including):
        assert api.patch(f"{C}/{created['id']}", json={"state": "active"}).status_code == 200
    api.patch(f"{C}/{including['id']}", json={"state": "paused"})
    api.patch(f"{C}/{including['id']}", json={"state": "active"})  # no second round
    person(api, "cid", plan="pro")
    deliver()

    received = {
        address: sorted(m.subject for m in got) for address, got in by_recipient(smtp).items()
    }
    assert received == {
        "ann@example.com": ["active at creation", "everyone in it"],
        "bob@example.com": ["active at creation", "everyone in it"],
        "cid@example.com": ["active at creation", "everyone in it", "new members only"],
    }
    assert len(deliveries(api, at_creation["id"])) == 3


# --- event-triggered ------------------------------------------------------------------------


def test_event_filter_frequency_and_event_variables(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp()
    add_local(api, smtp)
    big_orders = {"attribute": {"field": "total", "operator": "gte", "value": 100}}
    campaign(
        api,
        "event_triggered",
        subject="Order {{ event.order_id }}: {{ event.total }} ({{ event.name }})",
        trigger={"event_name": "order", "filter": big_orders},
        state="active",
        message={"text": "Thanks for {{ event.data.items | join: ', ' }}."},
    )
    campaign(
        api,
        "event_triggered",
        subject="First big order",
        trigger={"event_name": "order", "filter": big_orders},
        frequency="once",
        state="active",
    )
    person(api, "ann", email="ann@example.com")

    event(api, "ann", "order", order_id="A1", total=50, items=["pen"])
    event(api, "ann", "order", order_id="A2", total=150, items=["desk", "lamp"])
    event(api, "ann", "order", order_id="A3", total="200", items=["chair"])
    event(api, "ann", "refund", order_id="A2", total=150)
    deliver()

    assert subjects(smtp) == [
        "First big order",
        "Order A2: 150 (order)",
        "Order A3: 200 (order)",
    ]
    texts = sorted(m.text for m in smtp.messages if m.subject.startswith("Order"))
    assert texts == ["Thanks for chair.\n", "Thanks for desk, lamp.\n"]


# --- newsletter -----------------------------------------------------------------------------


def test_newsletter_goes_once_per_address_and_skips_whom_it_must(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp, run_jobs: RunJobs
) -> None:
    smtp = start_smtp()
    add_local(api, smtp)
    person(api, "ann", email="shared@example.com", first_name="Ann")
    person(api, "ann-2", email="Shared@example.com", first_name="Ann again")
    person(api, "bob", email="bob@example.com", first_name="Bob", unsubscribed=True)
    person(api, "bob-2", email="bob@example.com", first_name="Bob's twin")
    person(api, "cid", email="bounced@example.com", first_name="Cid")
    person(api, "dan", first_name="Dan")  # no email
    person(api, "eve", email="eve@example.com", first_name="Eve")
    person(api, "fay", email="shared@example.com", first_name="Fay")
    added = api.post("/v1/suppressions", json={"email": "bounced@example.com"})
    assert added.status_code == 201, added.text
    newsletter = campaign(
        api, "newsletter", subject="Hi {{ customer.first_name }}", audience={"all": True}
    )

    send(api, newsletter["id"])
    assert run_jobs(batch_size=2) == 1  # small batches: the dedup holds across them
    assert run_jobs() == 0
    deliver()

    received = {address: [m.subject for m in got] for address, got in by_recipient(smtp).items()}
    assert received == {
        "shared@example.com": ["Hi Ann"],
        "bob@example.com": ["Hi Bob's twin"],
        "eve@example.com": ["Hi Eve"],
    }
    records = {record["person_id"]: record for record in deliveries(api, newsletter["id"])}
    assert sorted(records) == ["ann", "bob", "bob-2", "cid", "eve"]
    assert (records["bob"]["status"], records["bob"]["last_error"]) == (
        "suppressed",
        "person unsubscribed",
    )
    assert records["cid"]["status"] == "suppressed"
    assert "suppression list" in records["cid"]["last_error"]
    details = api.get(f"{C}/{newsletter['id']}").json()
    assert details["state"] == "sent"
    assert details["sent_at"] is not None
    assert details["counts"]["by_status"] == {"sent": 3, "suppressed": 2}


def test_newsletter_skips_an_address_taken_in_an_earlier_batch_in_another_case(
    api: TestClient, run_jobs: RunJobs
) -> None:
    person(api, "ann", email="Shared@Example.com")
    person(api, "bob", email="bob@example.com")
    person(api, "cid", email="shared@example.com")  # the next batch
    person(api, "dan", email="BOB@EXAMPLE.COM")
    newsletter = campaign(api, "newsletter", audience={"all": True})

    send(api, newsletter["id"])
    assert run_jobs(batch_size=2) == 1

    records = deliveries(api, newsletter["id"])
    assert sorted((r["person_id"], r["to"]) for r in records) == [
        ("ann", "shared@example.com"),
        ("bob", "bob@example.com"),
    ]


def test_a_resumed_newsletter_skips_the_addresses_it_took_before_it_died(
    api: TestClient, run_jobs: RunJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    person(api, "ann", email="Ann@example.com")
    person(api, "bob", email="bob@example.com", unsubscribed=True)
    person(api, "cid", email="ann@EXAMPLE.com")  # the batch it dies in
    person(api, "dan", email="Bob@example.com")
    newsletter = campaign(api, "newsletter", audience={"all": True})
    send(api, newsletter["id"])
    real_enqueue = die_in_batch(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        run_jobs(batch_size=2)
    monkeypatch.setattr(fanout, "enqueue", real_enqueue)
    # Another process, once the lease has run out, takes the send over.
    assert run_jobs(clock=lambda: utcnow() + timedelta(minutes=6), batch_size=2) == 1

    records = deliveries(api, newsletter["id"])
    assert sorted((r["person_id"], r["status"]) for r in records) == [
        ("ann", "queued"),
        ("bob", "suppressed"),
        ("dan", "queued"),
    ]


def test_the_audience_is_fixed_when_the_newsletter_is_sent(
    api: TestClient, deliver: Deliver, start_smtp: StartSmtp, run_jobs: RunJobs
) -> None:
    smtp = start_smtp()
    add_local(api, smtp)
    pro = segment(api, plan_is("pro"))
    person(api, "ann", email="ann@example.com", plan="pro")
    person(api, "bob", email="bob@example.com", plan="basic")
    newsletter = campaign(api, "newsletter", audience={"segment_id": pro})
    due = utcnow() + timedelta(seconds=1)
    send(api, newsletter["id"], send_at=due.isoformat())

    assert run_jobs() == 0  # not due yet
    person(api, "bob", plan="pro")  # joins before the send time
    time.sleep(max(0.0, (due - utcnow()).total_seconds()))
    assert run_jobs() == 1
    person(api, "cid", email="cid@example.com", plan="pro")  # joins after it
    assert run_jobs() == 0
    deliver()

    assert sorted(by_recipient(smtp)) == ["ann@example.com", "bob@example.com"]


# --- triggered broadcast --------------------------------------------------------------------


@pytest.fixture
def audience(api: TestClient, start_smtp: StartSmtp) -> LocalSMTPServer:
    """One server and four people: ann and bob on the pro plan, cid on basic, dan unreachable."""
    smtp = start_smtp()
    add_local(api, smtp)
    person(api, "ann", email="ann@example.com", plan="pro", first_name="Ann")
    person(api, "bob", email="bob@example.com", plan="pro", first_name="Bob")
    person(api, "cid", email="cid@example.com", plan="basic", first_name="Cid")
    person(api, "dan", plan="pro", first_name="Dan")
    return smtp


def broadcast(api: TestClient, **fields: Any) -> int:
    created = campaign(
        api,
        "triggered_broadcast",
        subject="{{ trigger.headline }} for {{ customer.first_name }}",
        state="active",
        **fields,
    )
    return created["id"]


def received_subjects(smtp: LocalSMTPServer) -> dict[str, str]:
    return {m.rcpt_tos[0]: m.subject for m in smtp.messages}


def test_a_broadcast_without_recipients_goes_to_its_audience(
    api: TestClient, audience: LocalSMTPServer, deliver: Deliver, run_jobs: RunJobs
) -> None:
    pro = segment(api, plan_is("pro"))
    campaign_id = broadcast(api, audience={"segment_id": pro})

    trigger_id = trigger(api, campaign_id, data={"headline": "News"})
    run_jobs()
    deliver()

    assert received_subjects(audience) == {
        "ann@example.com": "News for Ann",
        "bob@example.com": "News for Bob",
    }
    status = trigger_status(api, campaign_id, trigger_id)
    assert status["state"] == "done"
    assert status["counts"] == {
        "recipients": 3,
        "queued": 2,
        "suppressed": 0,
        "failed": 0,
        "skipped": 1,
    }
    assert status["finished_at"] is not None


def test_a_broadcast_to_people_matching_a_condition_tree(
    api: TestClient, audience: LocalSMTPServer, deliver: Deliver, run_jobs: RunJobs
) -> None:
    event(api, "cid", "visited")
    campaign_id = broadcast(api)
    recipients = {
        "or": [
            {"attribute": {"field": "first_name", "operator": "eq", "value": "Ann"}},
            {"event": {"name": "visited", "within_days": 1}},
        ]
    }

    trigger(api, campaign_id, data={"headline": "Hello"}, recipients=recipients)
    run_jobs(batch_size=1)
    deliver()

    assert received_subjects(audience) == {
        "ann@example.com": "Hello for Ann",
        "cid@example.com": "Hello for Cid",
    }


def test_a_broadcast_to_ids_and_to_emails(
    api: TestClient, audience: LocalSMTPServer, deliver: Deliver, run_jobs: RunJobs
) -> None:
    by_id, by_email = broadcast(api), broadcast(api)

    first = trigger(api, by_id, data={"headline": "By id"}, ids=["bob", "dan", "bob"])
    second = trigger(
        api, by_email, data={"headline": "By email"}, emails=["CID@example.com", "ann@example.com"]
    )
    run_jobs()
    deliver()

    assert received_subjects(audience) == {
        "bob@example.com": "By id for Bob",
        "cid@example.com": "By email for Cid",
        "ann@example.com": "By email for Ann",
    }
    assert trigger_status(api, by_id, first)["errors"] == [
        {"recipient": "dan", "error": "the person has no email address"}
    ]
    assert trigger_status(api, by_email, second)["counts"]["queued"] == 2


def test_per_user_data_is_merged_over_the_trigger_data(
    api: TestClient, audience: LocalSMTPServer, deliver: Deliver, run_jobs: RunJobs
) -> None:
    campaign_id = broadcast(api, message={"text": "{{ trigger.code | default: 'none' }}"})

    trigger(
        api,
        campaign_id,
        data={"headline": "Offer", "code": "BASE"},
        per_user_data=[
            {"id": "ann", "data": {"code": "ANN10"}},
            {"email": "bob@example.com", "data": {"headline": "Special offer"}},
        ],
    )
    run_jobs()
    deliver()

    assert {m.rcpt_tos[0]: (m.subject, m.text) for m in audience.messages} == {
        "ann@example.com": ("Offer for Ann", "ANN10\n"),
        "bob@example.com": ("Special offer for Bob", "BASE\n"),
    }


@pytest.mark.parametrize(
    ("form", "known", "unknown", "flag"),
    [
        ("ids", "ann", "zed", "id_ignore_missing"),
        ("emails", "ann@example.com", "zed@example.com", "email_ignore_missing"),
        ("per_user_data", {"id": "ann"}, {"id": "zed"}, "id_ignore_missing"),
        ("per_user_data", {"id": "ann"}, {"email": "zed@example.com"}, "email_ignore_missing"),
    ],
)
def test_missing_recipients_fail_the_trigger_unless_ignored(
    api: TestClient,
    audience: LocalSMTPServer,
    deliver: Deliver,
    run_jobs: RunJobs,
    form: str,
    known: Any,
    unknown: Any,
    flag: str,
) -> None:
    strict_broadcast, lenient_broadcast = broadcast(api), broadcast(api)
    kind, recipient = ("id", "zed") if flag == "id_ignore_missing" else ("email", "zed@example.com")
    other_flag = "email_ignore_missing" if kind == "id" else "id_ignore_missing"

    strict = trigger(
        api,
        strict_broadcast,
        data={"headline": "Strict"},
        **{form: [known, unknown], other_flag: True},  # the other flag does not help
    )
    lenient = trigger(
        api, lenient_broadcast, data={"headline": "Lenient"}, **{form: [known, unknown], flag: True}
    )
    run_jobs()
    deliver()

    failed = trigger_status(api, strict_broadcast, strict)
    assert failed["state"] == "failed"
    assert failed["errors"] == [
        {"recipient": recipient, "error": f"no person with this {kind} in the workspace"}
    ]
    assert deliveries(api, strict_broadcast) == []
    done = trigger_status(api, lenient_broadcast, lenient)
    assert done["state"] == "done"
    assert done["errors"] == [
        {
            "recipient": recipient,
            "error": f"no person with this {kind} in the workspace (skipped: {flag})",
        }
    ]
    assert done["counts"]["queued"] == 1
    assert received_subjects(audience) == {"ann@example.com": "Lenient for Ann"}


# --- personalisation, unsubscribe, render errors --------------------------------------------


def test_liquid_personalises_from_subject_and_bodies_and_every_mail_can_unsubscribe(
    api: TestClient, audience: LocalSMTPServer, deliver: Deliver, run_jobs: RunJobs
) -> None:
    campaign_id = broadcast(
        api,
        message={
            "from": "{{ customer.first_name }} at Acme <team@acme.example>",
            "reply_to": "{{ trigger.desk }} <help@acme.example>",
            "text": "Dear {{ customer.first_name }},\nLeave: {{ unsubscribe_url }}",
            "html": "<p>Dear {{ customer.first_name }}</p><a href='{{ unsubscribe_url }}'>x</a>",
        },
    )

    trigger(api, campaign_id, data={"headline": "Welcome", "desk": "Help desk"}, ids=["ann"])
    run_jobs()
    deliver()

    [message] = audience.messages
    assert message.subject == "Welcome for Ann"
    assert message.header("From") == "Ann at Acme <team@acme.example>"
    assert message.header("Reply-To") == "Help desk <help@acme.example>"
    assert message.mail_from == "team@acme.example"
    link = message.header("List-Unsubscribe").strip("<>")
    assert link.startswith("http://127.0.0.1:8025/u/")
    assert message.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert message.text == f"Dear Ann,\nLeave: {link}\n"
    assert f"href='{link}'" in message.html

    assert api.post(link.removeprefix("http://127.0.0.1:8025")).status_code == 200
    assert api.get("/v1/people/ann").json()["unsubscribed"] is True


def test_every_campaign_type_carries_the_unsubscribe_headers(
    api: TestClient, audience: LocalSMTPServer, deliver: Deliver, run_jobs: RunJobs
) -> None:
    pro = segment(api, plan_is("gold"))
    campaign(api, "segment_triggered", trigger={"segment_id": pro}, state="active")
    campaign(api, "event_triggered", trigger={"event_name": "ping"}, state="active")
    newsletter = campaign(api, "newsletter", audience={"segment_id": pro})
    person(api, "ann", plan="gold")
    event(api, "ann", "ping")
    send(api, newsletter["id"])
    run_jobs()
    deliver()

    assert subjects(audience) == ["event_triggered", "newsletter", "segment_triggered"]
    for message in audience.messages:
        assert message.header("List-Unsubscribe").startswith("<http://127.0.0.1:8025/u/")
        assert message.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"


def test_a_template_that_fails_for_one_person_fails_only_their_delivery(
    api: TestClient, audience: LocalSMTPServer, deliver: Deliver, run_jobs: RunJobs
) -> None:
    person(api, "bob", first_name=None)
    newsletter = campaign(
        api,
        "newsletter",
        subject="Hi {{ customer.first_name | upcase }}",
        audience={"all": True},
    )

    send(api, newsletter["id"])
    run_jobs()
    deliver()

    assert received_subjects(audience) == {
        "ann@example.com": "Hi ANN",
        "cid@example.com": "Hi CID",
    }
    [failed] = [r for r in deliveries(api, newsletter["id"]) if r["status"] == "failed"]
    assert failed["person_id"] == "bob"
    assert failed["last_error"].startswith("render_error: subject: filter 'upcase' needs a value")
    assert failed["attempts"] == 0


# --- the jobs runner ------------------------------------------------------------------------


class Interleaved:
    """A database whose `n`th session first runs `between`: another process acting between
    two of this one's transactions."""

    def __init__(self, database: Database, n: int, between: Callable[[], object]) -> None:
        self.database = database
        self.n = n
        self.between = between
        self.calls = 0

    @contextmanager
    def session(self) -> Iterator[Any]:
        self.calls += 1
        if self.calls == self.n:
            self.between()
        with self.database.session() as session:
            yield session


def five_people_newsletter(api: TestClient) -> int:
    for name in ("ann", "bob", "cid", "dan", "eve"):
        person(api, name, email=f"{name}@example.com")
    newsletter = campaign(api, "newsletter", audience={"all": True})
    send(api, newsletter["id"])
    return newsletter["id"]


def test_a_send_that_died_is_resumed_after_its_lease_from_where_it_stopped(
    api: TestClient,
    database: Database,
    settings: Settings,
    deliver: Deliver,
    start_smtp: StartSmtp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    smtp = start_smtp()
    add_local(api, smtp)
    newsletter_id = five_people_newsletter(api)
    real_enqueue = die_in_batch(monkeypatch, 2)
    # Long enough to check within it on a busy machine, short enough to wait out.
    lease = 2.0
    short_lease = Settings(**{**settings.__dict__, "lease_seconds": lease})
    runtime = Runtime(short_lease, secret_box(settings))
    with pytest.raises(RuntimeError):
        Jobs(database, runtime, batch_size=2).run_due()
    died_at = time.monotonic()
    monkeypatch.setattr(fanout, "enqueue", real_enqueue)

    assert len(deliveries(api, newsletter_id)) == 2
    assert Jobs(database, runtime, batch_size=2).run_due() == 0  # the lease still holds
    assert time.monotonic() - died_at < lease, "too slow to check within the lease; raise it"
    time.sleep(lease + 0.1)
    assert Jobs(database, runtime, batch_size=2).run_due() == 1
    deliver()

    assert sorted(by_recipient(smtp)) == [
        f"{n}@example.com" for n in ("ann", "bob", "cid", "dan", "eve")
    ]
    assert all(len(got) == 1 for got in by_recipient(smtp).values())


def test_a_process_that_lost_its_lease_stops_without_queueing_twice(
    api: TestClient, database: Database, settings: Settings
) -> None:
    newsletter_id = five_people_newsletter(api)
    later = Runtime(settings, secret_box(settings), lambda: utcnow() + timedelta(minutes=6))
    thief = Jobs(database, later, batch_size=2)
    # Sessions: 1 finds due sends, 2 claims, 3 the first batch, 4 the second: before it,
    # another process (past the lease) takes the send over and finishes it.
    stalled = Interleaved(database, 4, thief.run_due)
    runtime = Runtime(settings, secret_box(settings))

    handled = Jobs(stalled, runtime, batch_size=2).run_due()  # type: ignore[arg-type]

    assert handled == 0
    records = deliveries(api, newsletter_id)
    assert sorted(r["to"] for r in records) == [
        f"{n}@example.com" for n in ("ann", "bob", "cid", "dan", "eve")
    ]
    with database.session() as session:
        stored = session.scalars(select(Campaign).where(Campaign.id == newsletter_id)).one()
        assert (stored.state, stored.lease_until) == ("sent", None)


def test_a_stopping_runner_hands_its_send_back_between_batches(
    api: TestClient, database: Database, settings: Settings
) -> None:
    newsletter_id = five_people_newsletter(api)
    runtime = Runtime(settings, secret_box(settings))

    async def stopped_during_the_second_batch() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stop_now() -> None:
            loop.call_soon_threadsafe(stop.set)
            time.sleep(0.2)  # for the runner's loop to see it

        await Jobs(Interleaved(database, 4, stop_now), runtime, batch_size=1).run(stop)  # type: ignore[arg-type]

    asyncio.run(stopped_during_the_second_batch())

    assert len(deliveries(api, newsletter_id)) == 2
    assert Jobs(database, runtime, batch_size=1).run_due() == 1  # taken over at once
    assert len(deliveries(api, newsletter_id)) == 5


def test_time_window_segments_are_re_evaluated_at_most_once_a_minute(
    api: TestClient, database: Database, settings: Settings
) -> None:
    """Entering a segment as time passes starts its campaign (queued at the jobs' clock, so
    this is checked in the outbox rather than at an SMTP server)."""
    visited = utcnow()
    person(api, "ann", email="ann@example.com")
    response = api.post(
        "/v1/people/ann/events", json={"name": "visited", "timestamp": visited.isoformat()}
    )
    assert response.status_code in {200, 201, 202}, response.text
    lapsed = segment(
        api,
        {
            "and": [
                {"attribute": {"field": "email", "operator": "exists"}},
                {"not": {"event": {"name": "visited", "within_days": 7}}},
            ]
        },
    )
    missed = campaign(
        api,
        "segment_triggered",
        subject="We miss you",
        trigger={"segment_id": lapsed},
        state="active",
    )
    now = [visited + timedelta(days=7) - timedelta(seconds=20)]
    jobs = Jobs(database, Runtime(settings, secret_box(settings), lambda: now[0]))

    jobs.run_due()  # re-evaluates: the visit is still within the window
    now[0] += timedelta(seconds=30)  # the visit is now out of it, but a minute has not passed
    jobs.run_due()
    assert deliveries(api, missed["id"]) == []

    now[0] += timedelta(seconds=40)
    jobs.run_due()

    [queued] = deliveries(api, missed["id"])
    assert (queued["person_id"], queued["status"], queued["subject"]) == (
        "ann",
        "queued",
        "We miss you",
    )


def test_postyard_serve_runs_the_jobs_beside_the_worker(
    settings: Settings, database: Database, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp()
    with database.session() as session:
        workspace = create_workspace(session, "Served", Plan.PREMIUM)
    app = create_app(settings, database, run_worker=True)
    headers = {"Authorization": f"Bearer {workspace.api_key}"}
    with TestClient(app, headers=headers) as api:
        add_local(api, smtp)
        person(api, "ann", email="ann@example.com")
        newsletter = campaign(api, "newsletter", audience={"all": True})
        send(api, newsletter["id"])

        [message] = smtp.wait_for(1, timeout=15)
        deadline = time.monotonic() + 10
        while api.get(f"{C}/{newsletter['id']}").json()["state"] != "sent":
            assert time.monotonic() < deadline
            time.sleep(0.05)

    assert message.subject == "newsletter"
