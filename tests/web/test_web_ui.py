"""The admin UI over plain HTTP, on both database backends: sessions and CSRF, the wall
between workspaces, forms refused by the rules, and the overview's numbers."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from tests.web.conftest import CSRF, Browserless, WebFactory

from postyard.clock import utcnow
from postyard.db.engine import Database
from postyard.db.models import Delivery, SmtpServer, WebSession
from postyard.delivery.outbox import Letter, enqueue
from postyard.delivery.policy import Status
from postyard.routing import Plan
from postyard.services import overview
from postyard.services.deliveries import DeliveryFilter, list_deliveries
from postyard.services.keys import revoke_key
from postyard.services.workspaces import Caller
from postyard.web.session import SESSION_COOKIE, token_hash

SERVER = {
    "name": "smtp-main",
    "host": "smtp.example.com",
    "port": "587",
    "security": "starttls",
    "max_connections": "4",
    "role": "",
}


def add(web: Browserless, **fields: str) -> int:
    response = web.submit("/smtp/new", **{**SERVER, **fields})
    assert response.status_code == 303, response.text
    return int(response.headers["location"].split("server=")[1].split("#")[0])


def queue(database: Database, workspace_id: int, to: str = "bob@example.com") -> int:
    with database.session() as session:
        return enqueue(
            session,
            workspace_id,
            Letter("newsletter", to, "news@acme.example", "Hi", "Hello"),
            utcnow(),
            timedelta(days=1),
        ).id


def test_pages_need_a_session_and_say_where_to_come_back(make_web: WebFactory) -> None:
    web = make_web(signed_in=False)
    response = web.get("/deliveries?status=sent", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fdeliveries%3Fstatus%3Dsent"
    response = web.post("/smtp/new", data=SERVER, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/login")
    assert web.get("/", follow_redirects=False).headers["location"] == "/login"


def test_session_cookie_is_httponly_lax_and_secure_over_https(make_web: WebFactory) -> None:
    web = make_web(signed_in=False, base_url="https://testserver")
    page = web.get("/login")
    response = web.post(
        "/login",
        data={"csrf_token": CSRF.search(page.text)[1], "api_key": web.api_key},
        follow_redirects=False,
    )
    cookie = next(
        header
        for header in response.headers.get_list("set-cookie")
        if header.startswith(SESSION_COOKIE + "=")
    )
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite=lax", "path=/"} <= attributes
    assert web.api_key not in cookie

    plain = make_web(signed_in=False)
    page = plain.get("/login")
    response = plain.post(
        "/login",
        data={"csrf_token": CSRF.search(page.text)[1], "api_key": plain.api_key},
        follow_redirects=False,
    )
    assert "secure" not in response.headers["set-cookie"].lower()


def test_a_forged_tampered_or_expired_cookie_is_no_session(
    make_web: WebFactory, database: Database
) -> None:
    web = make_web()
    good = web.cookies[SESSION_COOKIE]
    with database.session() as session:
        row = session.scalars(select(WebSession).where(WebSession.token_hash == token_hash(good)))
        stored = row.one()
        # Only the hash is kept: what the database holds is useless as a cookie.
        assert stored.workspace_id == web.workspace_id and good not in stored.token_hash
    forged = [
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # one character changed
        stored.token_hash,  # the stored hash, read from the database
        "v1.1.1.99999999999.nonce.signature",  # the old signed format
        "",
    ]
    for value in forged:
        web.cookies.clear()
        web.cookies.set(SESSION_COOKIE, value)
        response = web.get("/smtp", follow_redirects=False)
        assert response.status_code == 303, value
        assert response.headers["location"].startswith("/login")

    with database.session() as session:
        session.execute(
            update(WebSession)
            .where(WebSession.token_hash == token_hash(good))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    web.cookies.clear()
    web.cookies.set(SESSION_COOKIE, good)
    assert web.get("/smtp", follow_redirects=False).status_code == 303


def test_signing_out_ends_the_session_for_a_copied_cookie_too(
    make_web: WebFactory, database: Database
) -> None:
    web = make_web()
    copied = make_web(signed_in=False)
    copied.cookies.set(SESSION_COOKIE, web.cookies[SESSION_COOKIE])
    assert copied.get("/smtp", follow_redirects=False).status_code == 200

    response = web.submit("/logout")
    assert response.headers["location"] == "/login?signed_out=1"
    response = copied.get("/smtp", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    with database.session() as session:
        ended = session.scalars(
            select(WebSession.ended_at).where(WebSession.workspace_id == web.workspace_id)
        ).all()
    assert ended and all(moment is not None for moment in ended)


def test_revoking_the_key_ends_its_web_sessions(make_web: WebFactory, database: Database) -> None:
    web = make_web()
    assert web.get("/smtp", follow_redirects=False).status_code == 200
    with database.session() as session:
        key_id = session.scalars(
            select(WebSession.api_key_id).where(WebSession.workspace_id == web.workspace_id)
        ).one()
        revoke_key(session, key_id)
    response = web.get("/smtp", follow_redirects=False)
    assert response.status_code == 303 and "expired=1" in response.headers["location"]


def test_every_post_needs_the_sessions_csrf_token(make_web: WebFactory, database: Database) -> None:
    web = make_web()
    other = make_web()
    server_id = add(web)
    for token in ("", "forged", other.csrf):
        for path, fields in (
            ("/smtp/new", SERVER),
            (f"/smtp/{server_id}/role", {"role": "none"}),
            (f"/smtp/{server_id}/delete", {}),
            ("/logout", {}),
        ):
            response = web.post(path, data={**fields, "csrf_token": token})
            assert response.status_code == 403, (path, token)
            assert "Form expired" in response.text
    with database.session() as session:
        count = session.scalar(
            select(func.count()).where(SmtpServer.workspace_id == web.workspace_id)
        )
    assert count == 1


def test_sign_in_needs_its_own_csrf_cookie_and_returns_only_to_local_paths(
    make_web: WebFactory,
) -> None:
    web = make_web(signed_in=False)
    token = CSRF.search(web.get("/login").text)[1]
    web.cookies.clear()
    response = web.post("/login", data={"csrf_token": token, "api_key": web.api_key})
    assert response.status_code == 403
    assert SESSION_COOKIE not in response.cookies

    for target, expected in (
        ("//evil.example/", "/overview"),
        ("https://evil.example/", "/overview"),
        ("/\\evil.example", "/overview"),
        ("/deliveries?status=failed", "/deliveries?status=failed"),
    ):
        web.cookies.clear()
        token = CSRF.search(web.get("/login").text)[1]
        response = web.post(
            "/login",
            data={"csrf_token": token, "api_key": web.api_key, "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == expected, target


def test_pages_forbid_scripts_and_framing(web: Browserless) -> None:
    for path in ("/overview", "/smtp", "/smtp/new", "/deliveries", "/smtp/12345"):
        response = web.get(path)
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["cache-control"] == "no-store"
        assert "<script" not in response.text


def test_another_workspaces_objects_are_a_404_page_and_stay_unchanged(
    make_web: WebFactory, database: Database
) -> None:
    web = make_web()
    theirs = make_web()
    server_id = add(theirs, name="their-smtp")
    delivery_id = queue(database, theirs.workspace_id)
    for path in (
        f"/smtp/{server_id}",
        f"/smtp/{server_id}/delete",
        f"/deliveries/{delivery_id}",
        "/smtp/2147483648",
        "/deliveries/x",
    ):
        response = web.get(path)
        assert response.status_code == 404, path
        assert "Not found" in response.text and "their-smtp" not in response.text
    for action, fields in (
        ("", {**SERVER, "name": "mine-now"}),
        ("/role", {"role": "none"}),
        ("/move", {"direction": "down"}),
        ("/test", {}),
        ("/send-test", {"campaign_type": "newsletter", "to": "a@b.example", "from": "c@d.example"}),
        ("/delete", {}),
    ):
        response = web.submit(f"/smtp/{server_id}{action}", **fields)
        assert response.status_code == 404, action
    with database.session() as session:
        server = session.get(SmtpServer, server_id)
        assert server is not None
        assert (server.name, server.role) == ("their-smtp", "all_emails")
    assert "their-smtp" not in web.get("/deliveries").text


def test_refusals_of_the_rules_are_shown_where_they_belong_and_nothing_is_stored(
    make_web: WebFactory, database: Database
) -> None:
    standard = make_web("standard")
    first = add(standard)
    response = standard.submit("/smtp/new", **{**SERVER, "name": "smtp-second"})
    assert response.status_code == 403
    assert "The standard plan allows at most 1 custom SMTP server" in response.text
    assert 'value="smtp-second"' in response.text

    response = standard.submit(f"/smtp/{first}/role", role="none")
    assert response.status_code == 409
    assert 'id="role-error-' in response.text
    assert "Not changed: Server &#39;smtp-main&#39;" in response.text
    response = standard.submit(f"/smtp/{first}/role", role="superuser")
    assert response.status_code == 422
    assert "Choose one of the roles in the list." in response.text

    response = standard.submit(f"/smtp/{first}", **{**SERVER, "ca_bundle": "not a PEM"})
    assert response.status_code == 422
    assert 'id="f-ca_bundle-error"' in response.text
    assert "not a PEM certificate bundle" in response.text
    with database.session() as session:
        servers = session.scalars(
            select(SmtpServer).where(SmtpServer.workspace_id == standard.workspace_id)
        ).all()
        assert [(s.name, s.role, s.ca_bundle) for s in servers] == [
            ("smtp-main", "all_emails", None)
        ]


def test_a_test_email_form_with_bad_fields_queues_nothing(
    web: Browserless, database: Database
) -> None:
    server_id = add(web)
    response = web.submit(
        f"/smtp/{server_id}/send-test",
        campaign_type="newsletter",
        to="not an address",
        subject="Line one\r\nBcc: victim@example.com",
        text="Hi",
    )
    assert response.status_code == 422
    text = response.text
    assert 'id="f-to-error"' in text and 'id="f-from-error"' in text
    assert 'id="f-subject-error"' in text and "single line" in text
    assert 'value="not an address"' in text
    with database.session() as session:
        assert not session.scalar(
            select(func.count()).where(Delivery.workspace_id == web.workspace_id)
        )


def test_the_address_filter_matches_part_of_an_address_and_wildcards_literally(
    web: Browserless, database: Database
) -> None:
    for to in ("ann@example.com", "bob@example.com", "100%_real@example.com"):
        queue(database, web.workspace_id, to)
    caller = Caller(web.workspace_id, Plan.PREMIUM, 0)

    def found(address: str) -> list[str]:
        with database.session() as session:
            page = list_deliveries(session, caller, DeliveryFilter(address=address), 50, None)
            return sorted(d.to_address for d in page.deliveries)

    assert found("ANN@") == ["ann@example.com"]
    assert found("%") == ["100%_real@example.com"]
    assert found("_") == ["100%_real@example.com"]
    assert len(found("example")) == 3
    page = web.get("/deliveries?address=bob")
    assert page.text.count("data-delivery=") == 1


def seed(database: Database, workspace_id: int, server_id: int | None, **fields: Any) -> None:
    moment = fields.pop("at")
    values: dict[str, Any] = {
        "workspace_id": workspace_id,
        "campaign_type": "newsletter",
        "to_address": "reader@example.com",
        "from_address": "news@acme.example",
        "subject": "History",
        "message_id": f"<{uuid.uuid4().hex}@acme.example>",
        "status": Status.SENT,
        "attempts": 1,
        "next_attempt_at": moment,
        "expires_at": moment + timedelta(days=3),
        "smtp_server_id": server_id,
        "created_at": moment,
        "updated_at": moment,
        "sent_at": moment,
        **fields,
    }
    with database.session() as session:
        session.add(Delivery(**values))


def test_overview_counts_per_server_and_hour_the_queue_and_the_troubled_servers(
    web: Browserless, database: Database
) -> None:
    main, news = add(web), add(web, name="smtp-news", role="newsletters")
    caller = Caller(web.workspace_id, Plan.PREMIUM, 0)
    now = utcnow()
    hour = overview.floor_hour(now)
    for minutes in (1, 20, 59):
        seed(
            database,
            web.workspace_id,
            main,
            at=hour - timedelta(hours=3) + timedelta(minutes=minutes),
        )
    seed(database, web.workspace_id, news, at=hour - timedelta(hours=3, minutes=-5))
    seed(database, web.workspace_id, news, at=hour - timedelta(hours=30))  # too old to count
    seed(
        database,
        web.workspace_id,
        news,
        at=now - timedelta(minutes=40),
        updated_at=now - timedelta(minutes=1),
        status=Status.DEFERRED,
        sent_at=None,
        next_attempt_at=now + timedelta(hours=1),
        last_error="421 4.3.2 Service shutting down",
    )
    seed(
        database,
        web.workspace_id,
        None,
        at=now - timedelta(minutes=5),
        status=Status.DEFERRED,
        sent_at=None,
        next_attempt_at=now + timedelta(hours=1),
        last_error="no_route: the workspace has no SMTP server",
    )

    with database.session() as session:
        counts = overview.sent_per_hour(
            session, caller, hour - timedelta(hours=23), hour + timedelta(hours=1)
        )
        queue_now = overview.queue(session, caller)
        troubles = overview.troubled_servers(session, caller, now - timedelta(hours=1))
    by_key = {(c.smtp_server_id, c.hour): c.count for c in counts}
    assert by_key == {(main, hour - timedelta(hours=3)): 3, (news, hour - timedelta(hours=3)): 1}
    assert all(isinstance(c.hour, datetime) for c in counts)
    assert queue_now.depth == 2 and queue_now.without_route == 1
    assert queue_now.oldest_created_at == now - timedelta(minutes=40)
    assert [(t.smtp_server_id, t.deferred, t.failed) for t in troubles] == [(news, 1, 0)]
    assert troubles[0].last_error == "421 4.3.2 Service shutting down"

    page = web.get("/overview")
    assert page.status_code == 200
    assert '<p class="big" id="sent-total">4</p>' in page.text
    assert '<p class="big" id="queue-depth">2</p>' in page.text
    assert "1 of them waiting for a route" in page.text
    assert "421 4.3.2 Service shutting down" in page.text
    assert page.text.count('class="bar series-') == 2


@pytest.mark.parametrize("path", ["/overview", "/smtp", "/deliveries"])
def test_pages_of_an_empty_workspace_say_so(web: Browserless, path: str) -> None:
    response = web.get(path)
    assert response.status_code == 200
    assert any(
        words in response.text
        for words in ("No SMTP servers yet", "no SMTP server of its own yet", "No deliveries yet")
    )


def test_the_log_pages_back_through_older_deliveries_keeping_its_filters(
    web: Browserless, database: Database
) -> None:
    ids = [queue(database, web.workspace_id, f"reader{i}@example.com") for i in range(53)]
    first = web.get("/deliveries?address=reader")
    assert first.text.count("data-delivery=") == 50
    older = re.search(r'href="(/deliveries\?[^"]+)" rel="next"', first.text)
    assert older is not None
    link = older[1].replace("&amp;", "&")
    assert "address=reader" in link and f"before={ids[3]}" in link
    second = web.get(link)
    assert [int(i) for i in re.findall(r'data-delivery="(\d+)"', second.text)] == ids[2::-1]
    assert 'rel="next"' not in second.text and "← Newest" in second.text
