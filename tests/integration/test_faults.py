"""Faults (DESIGN §5) with Postfix's smtp-sink as the peer, using its own fault switches:
4xx and 421 storms, a hang-up after the final dot, a server that is down, a lifetime that
runs out, the database cutting the workers' connections, and a worker killed mid-run.

Every test counts what the server took (each message is dumped by the sink) against what
was queued: nothing lost, and duplicates only where SMTP cannot avoid them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fault_helpers import (
    in_flight,
    message_ids,
    queue_many,
    start_worker,
    statuses,
    tally,
    terminate_backends,
    worker_environment,
)
from integration_helpers import add_server, delivery, run_once
from smtp_sink import SmtpSink

from postyard.config import Settings
from postyard.db.engine import Database
from postyard.delivery.worker import BATCHES_IN_FLIGHT, Worker
from postyard.localsmtp import free_port

StartSink = Callable[..., SmtpSink]
Deliver = Callable[..., None]

MESSAGES = 20


def retry_round(database: Database, settings: Settings) -> int:
    """A worker round once the deferred messages are due again (the backoff is capped)."""
    time.sleep(settings.retry_max_seconds)
    return run_once(database, settings)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition`; the timeout only bounds a broken run, it measures nothing."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout:g} s"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("fault", "reply"),
    [
        (("-r", "RCPT"), "450 4.3.0"),  # a soft reject of every recipient
        (("-Q", "MAIL"), "421"),  # 421 and hang up at MAIL
        (("-Q", "CONNECT"), "421"),  # 421 at the greeting: no session at all
    ],
    ids=["4xx-at-rcpt", "421-at-mail", "421-at-greeting"],
)
def test_a_storm_of_temporary_failures_is_delivered_once_the_server_recovers(
    api: TestClient,
    database: Database,
    settings: Settings,
    deliver: Deliver,
    start_sink: StartSink,
    fault: tuple[str, ...],
    reply: str,
) -> None:
    faulty = start_sink(*fault)
    add_server(api, "smtp-main", faulty.port)
    ids = queue_many(database, api.workspace_id, MESSAGES)  # type: ignore[attr-defined]

    run_once(database, settings)
    retry_round(database, settings)

    for delivery_id in ids:
        record = delivery(api, delivery_id)
        assert (record["status"], record["attempts"]) == ("deferred", 2), record
        assert reply in record["last_error"], record
        assert record["next_attempt_at"] is not None  # the backoff, visible per delivery

    faulty.stop()
    healthy = start_sink(port=faulty.port)
    deliver()

    assert statuses(database, api.workspace_id) == {"sent": MESSAGES}  # type: ignore[attr-defined]
    assert all(delivery(api, delivery_id)["attempts"] == 3 for delivery_id in ids)
    counts = tally(message_ids(database, api.workspace_id), [healthy.message_ids()])  # type: ignore[attr-defined]
    assert (counts.distinct, counts.duplicates, counts.missing) == (MESSAGES, 0, 0)
    assert faulty.message_ids() == {}


def test_a_hang_up_after_the_final_dot_duplicates_exactly_the_dropped_messages(
    api: TestClient,
    database: Database,
    settings: Settings,
    deliver: Deliver,
    start_sink: StartSink,
) -> None:
    dropping = start_sink("-q", ".")  # takes the message, then hangs up without a reply
    add_server(api, "smtp-main", dropping.port)
    ids = queue_many(database, api.workspace_id, MESSAGES)  # type: ignore[attr-defined]

    run_once(database, settings)
    retry_round(database, settings)
    drops = sum(dropping.message_ids().values())
    assert drops == 2 * MESSAGES  # every attempt reached the dot and was dropped
    assert "lost" in delivery(api, ids[0])["last_error"]

    dropping.stop()
    healthy = start_sink(port=dropping.port)
    deliver()

    assert statuses(database, api.workspace_id) == {"sent": MESSAGES}  # type: ignore[attr-defined]
    queued = message_ids(database, api.workspace_id)  # type: ignore[attr-defined]
    counts = tally(queued, [dropping.message_ids(), healthy.message_ids()])
    assert (counts.distinct, counts.missing, counts.strangers) == (MESSAGES, 0, 0)
    assert counts.duplicates == drops  # at least once: one extra copy per drop, never more
    assert set(healthy.message_ids().values()) == {1}


def test_a_server_that_is_down_then_up_gets_everything_and_nothing_fails(
    api: TestClient,
    database: Database,
    settings: Settings,
    deliver: Deliver,
    start_sink: StartSink,
) -> None:
    port = free_port()  # nothing listens there yet
    add_server(api, "smtp-main", port)
    ids = queue_many(database, api.workspace_id, MESSAGES)  # type: ignore[attr-defined]

    run_once(database, settings)
    retry_round(database, settings)
    assert statuses(database, api.workspace_id) == {"deferred": MESSAGES}  # type: ignore[attr-defined]
    assert "cannot connect to smtp-main" in delivery(api, ids[0])["last_error"]

    sink = start_sink(port=port)
    deliver()

    assert statuses(database, api.workspace_id) == {"sent": MESSAGES}  # type: ignore[attr-defined]
    counts = tally(message_ids(database, api.workspace_id), [sink.message_ids()])  # type: ignore[attr-defined]
    assert (counts.distinct, counts.duplicates, counts.missing) == (MESSAGES, 0, 0)


def test_messages_deferred_past_their_lifetime_fail_with_the_reason(
    api: TestClient, database: Database, deliver: Deliver, start_sink: StartSink
) -> None:
    sink = start_sink("-r", "RCPT")  # 450 for ever
    add_server(api, "smtp-main", sink.port)
    ids = queue_many(
        database,
        api.workspace_id,  # type: ignore[attr-defined]
        MESSAGES,
        lifetime=timedelta(seconds=0.5),
    )

    deliver()

    assert statuses(database, api.workspace_id) == {"failed": MESSAGES}  # type: ignore[attr-defined]
    for delivery_id in ids:
        record = delivery(api, delivery_id)
        assert record["last_error"].startswith("lifetime exceeded after"), record
        assert "450 4.3.0" in record["last_error"]  # the last reply, never silently


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_workers_carry_on_when_the_database_cuts_their_connections(
    api: TestClient,
    database: Database,
    database_url: str,
    settings: Settings,
    start_sink: StartSink,
) -> None:
    """What a PostgreSQL restart does to the workers' connections, without restarting the
    server other tests share (bench/chaos.py restarts it for real). PostgreSQL only: SQLite
    has no connections to cut."""
    sink = start_sink()
    add_server(api, "smtp-main", sink.port, max_connections=2)
    workspace_id: int = api.workspace_id  # type: ignore[attr-defined]
    total, batch, cut_at = 1000, 20, (100, 400, 700)
    queue_many(database, workspace_id, total)
    worker = Worker(database, Settings(**{**settings.__dict__, "worker_batch_size": batch}))
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(worker.run(stop))
        except BaseException as error:  # reported by the assertions below
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    cuts = 0
    try:
        for progress in cut_at:
            wait_until(lambda n=progress: statuses(database, workspace_id)["sent"] >= n, 60, "sent")
            cuts += terminate_backends(database_url)
        wait_until(lambda: statuses(database, workspace_id) == {"sent": total}, 60, "all sent")
    finally:
        with suppress(RuntimeError):  # the loop is gone: the worker died, reported below
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()

    assert failure == [] and not thread.is_alive()
    assert cuts >= len(cut_at)
    counts = tally(message_ids(database, workspace_id), [sink.message_ids()])
    assert (counts.distinct, counts.missing) == (total, 0)
    assert counts.duplicates <= len(cut_at) * batch  # at most a batch per cut, at worst


def test_a_worker_killed_mid_run_loses_nothing_and_duplicates_at_most_its_batches(
    api: TestClient,
    database: Database,
    database_url: str,
    settings: Settings,
    start_sink: StartSink,
    tmp_path: Path,
) -> None:
    sink = start_sink()
    add_server(api, "smtp-main", sink.port)
    workspace_id: int = api.workspace_id  # type: ignore[attr-defined]
    total, batch = 1000, 100
    queue_many(database, workspace_id, total)
    assert settings.secret_key is not None
    env = worker_environment(
        database_url,
        settings.secret_key,
        worker_batch_size=batch,
        lease_seconds=2,
        worker_poll_seconds=0.05,
    )
    first = start_worker(env, tmp_path / "worker-1.log")
    try:
        wait_until(lambda: sum(sink.message_ids().values()) >= total // 3, 60, "a third sent")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    bound = len(in_flight(database, workspace_id))

    second = start_worker(env, tmp_path / "worker-2.log")
    try:
        wait_until(lambda: statuses(database, workspace_id) == {"sent": total}, 60, "all sent")
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=30)
        except subprocess.TimeoutExpired:
            second.kill()

    counts = tally(message_ids(database, workspace_id), [sink.message_ids()])
    assert (counts.distinct, counts.missing, counts.strangers) == (total, 0, 0)
    # Only what the killed worker held in flight: its batches in hand, at most.
    assert counts.duplicates <= bound <= BATCHES_IN_FLIGHT * batch
