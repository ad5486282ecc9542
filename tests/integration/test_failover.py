"""Failover (a workspace setting, off by default): while the server set to a campaign type
cannot be reached, that type goes through the primary All Emails server, each delivery marked
`via: failover`; `GET /v1/routing` shows the server down; once it is back, the type returns
to it. A 5xx about the message is no outage, and with failover off mail waits as before."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from integration_helpers import add_local, delivery, queue, run_once, run_round, subjects

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.delivery.worker import Worker
from postyard.localsmtp import FaultScript, LocalSMTPServer

StartSmtp = Callable[..., LocalSMTPServer]
Deliver = Callable[..., None]


def set_failover(api: TestClient, on: bool) -> None:
    response = api.patch("/v1/workspace", json={"failover": on})
    assert response.status_code == 200, response.text
    assert response.json()["failover"] is on


def routing(api: TestClient) -> dict[str, Any]:
    response = api.get("/v1/routing")
    assert response.status_code == 200, response.text
    return response.json()


def newsletter_route(api: TestClient) -> dict[str, Any]:
    return next(line for line in routing(api)["routes"] if line["campaign_type"] == "newsletter")


def reachability(api: TestClient, server_id: int) -> dict[str, Any]:
    return next(line for line in routing(api)["servers"] if line["smtp_server_id"] == server_id)


def until(condition: Callable[[], bool], worker: Worker, timeout: float = 15.0) -> None:
    """Run worker rounds until `condition` holds; the timeout only bounds a broken run."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        run_round(worker)
        time.sleep(0.02)


@pytest.fixture
def servers(api: TestClient, start_smtp: StartSmtp) -> tuple[LocalSMTPServer, LocalSMTPServer]:
    """smtp-main (All Emails) and smtp-news (Newsletters), both configured and running."""
    main = start_smtp("smtp-main")
    news = start_smtp("smtp-news")
    add_local(api, main)
    add_local(api, news, role="newsletters")
    return main, news


def ids(api: TestClient) -> dict[str, int]:
    return {row["name"]: row["id"] for row in api.get("/v1/smtp_servers").json()["data"]}


def retry_round(database: Database, settings: Settings) -> int:
    """A worker round once the deferred messages are due again (the backoff is capped)."""
    time.sleep(settings.retry_max_seconds)
    return run_once(database, settings)


def test_failover_is_off_until_the_workspace_turns_it_on(api: TestClient) -> None:
    assert api.get("/v1/workspace").json()["failover"] is False
    set_failover(api, True)
    assert api.get("/v1/workspace").json()["failover"] is True
    assert routing(api)["failover"] is True


@pytest.mark.parametrize("body", [{"failover": "yes"}, {"failover": None}, {"colour": "red"}])
def test_a_bad_workspace_patch_is_refused_with_a_code(
    api: TestClient, body: dict[str, Any]
) -> None:
    response = api.patch("/v1/workspace", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_newsletters_fail_over_while_their_server_is_down_and_return_when_it_is_back(
    api: TestClient,
    database: Database,
    settings: Settings,
    servers: tuple[LocalSMTPServer, LocalSMTPServer],
) -> None:
    main, news = servers
    server_ids = ids(api)
    set_failover(api, True)
    news.stop()
    worker = Worker(database, settings)

    first = queue(api, "newsletter")["id"]
    run_round(worker)  # refused: deferred, and the server is marked down
    assert delivery(api, first)["status"] == "deferred"
    down = reachability(api, server_ids["smtp-news"])
    assert down["reachable"] is False and down["unreachable_since"] is not None
    assert "cannot connect to smtp-news" in down["unreachable_error"]
    route = newsletter_route(api)
    assert (route["smtp_server_name"], route["via"]) == ("smtp-main", "failover")
    assert "smtp-news" in route["explanation"]

    until(lambda: delivery(api, first)["status"] == "sent", worker)
    sent = delivery(api, first)
    assert (sent["smtp_server_id"], sent["via"]) == (server_ids["smtp-main"], "failover")
    assert subjects(main) == ["newsletter"]

    news.start()  # the same port: the configured address works again
    sent_to_news: list[int] = []

    def a_newsletter_reaches_its_own_server() -> bool:
        record = delivery(api, queue(api, "newsletter")["id"])
        if record["status"] == "sent" and record["smtp_server_id"] == server_ids["smtp-news"]:
            sent_to_news.append(record["id"])
        run_round(worker)
        return bool(news.messages)

    until(a_newsletter_reaches_its_own_server, worker)
    assert reachability(api, server_ids["smtp-news"])["reachable"] is True
    route = newsletter_route(api)
    assert (route["smtp_server_name"], route["via"]) == ("smtp-news", "specific")
    latest = queue(api, "newsletter")["id"]
    until(lambda: delivery(api, latest)["status"] == "sent", worker)
    assert delivery(api, latest)["via"] == "specific"
    assert delivery(api, latest)["smtp_server_id"] == server_ids["smtp-news"]


def test_with_failover_off_newsletters_wait_for_their_own_server(
    api: TestClient,
    database: Database,
    settings: Settings,
    deliver: Deliver,
    servers: tuple[LocalSMTPServer, LocalSMTPServer],
) -> None:
    main, news = servers
    server_ids = ids(api)
    news.stop()
    delivery_id = queue(api, "newsletter")["id"]

    run_once(database, settings)
    retry_round(database, settings)

    record = delivery(api, delivery_id)
    assert (record["status"], record["via"]) == ("deferred", "specific")
    assert record["smtp_server_id"] == server_ids["smtp-news"]
    assert reachability(api, server_ids["smtp-news"])["reachable"] is False
    assert newsletter_route(api)["via"] == "specific"
    assert main.messages == []

    news.start()
    deliver()
    record = delivery(api, delivery_id)
    assert (record["status"], record["via"]) == ("sent", "specific")
    assert subjects(news) == ["newsletter"]
    assert reachability(api, server_ids["smtp-news"])["reachable"] is True


def test_a_5xx_about_the_message_is_no_outage_and_does_not_fail_over(
    api: TestClient, database: Database, settings: Settings, start_smtp: StartSmtp
) -> None:
    main = start_smtp("smtp-main")
    news = start_smtp("smtp-news", faults=FaultScript.always("550 5.7.1 Content rejected"))
    add_local(api, main)
    news_id = add_local(api, news, role="newsletters")["id"]
    set_failover(api, True)
    delivery_id = queue(api, "newsletter")["id"]

    run_once(database, settings)

    record = delivery(api, delivery_id)
    assert (record["status"], record["via"], record["smtp_server_id"]) == (
        "failed",
        "specific",
        news_id,
    )
    assert reachability(api, news_id)["reachable"] is True
    assert newsletter_route(api)["via"] == "specific"
    assert main.messages == []


def test_a_421_marks_the_server_down_and_the_next_batch_fails_over(
    api: TestClient, database: Database, settings: Settings, start_smtp: StartSmtp
) -> None:
    main = start_smtp("smtp-main")
    news = start_smtp(
        "smtp-news", faults=FaultScript.always("421 4.3.2 Service shutting down", at="RCPT")
    )
    add_local(api, main)
    news_id = add_local(api, news, role="newsletters")["id"]
    set_failover(api, True)
    delivery_id = queue(api, "newsletter")["id"]

    run_once(database, settings)
    assert delivery(api, delivery_id)["status"] == "deferred"
    assert reachability(api, news_id)["unreachable_error"].startswith("421")

    retry_round(database, settings)
    record = delivery(api, delivery_id)
    assert (record["status"], record["via"]) == ("sent", "failover")
    assert subjects(main) == ["newsletter"]


def test_no_failover_when_the_all_emails_server_is_the_one_down(
    api: TestClient, database: Database, settings: Settings, start_smtp: StartSmtp
) -> None:
    main = start_smtp("smtp-main")
    main_id = add_local(api, main)["id"]
    set_failover(api, True)
    main.stop()
    delivery_id = queue(api, "segment_triggered")["id"]

    run_once(database, settings)
    retry_round(database, settings)

    record = delivery(api, delivery_id)
    assert (record["status"], record["via"], record["smtp_server_id"]) == (
        "deferred",
        "fallback",
        main_id,
    )
    assert reachability(api, main_id)["reachable"] is False
