"""Scale-out on PostgreSQL (DESIGN §6): several `postyard worker` processes share one outbox
and one set of SMTP servers; every message is accepted exactly once, and each server's
limits hold across all of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from integration_helpers import add_server
from recording_smtp import RecordingSMTPServer, busiest_second, observed_rate
from smtp_sink import SmtpSink
from sqlalchemy import func, select
from test_server_limits import queue_messages, statuses

from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery
from postyard.delivery.outbox import Letter, enqueue_many

WORKERS = 4
StartSink = Callable[..., SmtpSink]

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path
    """Its output goes to a file: a pipe nobody reads until the end would fill up and
    block the worker on its next log line."""


def start_workers(
    settings: Settings, log_directory: Path, count: int = WORKERS
) -> list[WorkerProcess]:
    """`postyard worker` processes, configured through the environment as in production."""
    env = {
        **os.environ,
        "POSTYARD_DATABASE_URL": settings.database_url,
        "POSTYARD_SECRET_KEY": settings.secret_key or "",
        "POSTYARD_WORKER_POLL_SECONDS": "0.05",
        "POSTYARD_WORKER_BATCH_SIZE": "100",
    }
    command = [sys.executable, "-c", "from postyard.cli import app; app()", "worker"]
    workers = []
    for n in range(count):
        log = log_directory / f"worker-{n}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        workers.append(WorkerProcess(process, log))
    return workers


def stop_workers(workers: list[WorkerProcess]) -> list[str]:
    """SIGTERM each worker and collect its output; each must exit cleanly."""
    for worker in workers:
        worker.process.send_signal(signal.SIGTERM)
    outputs = []
    for worker in workers:
        try:
            worker.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        output = worker.log.read_text(errors="replace")
        outputs.append(output)
        assert worker.process.returncode == 0, output[-3000:]
    return outputs


def wait_until_sent(database: Database, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with database.session() as session:
            sent = session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.status == "sent")
            )
        if sent == count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{sent} of {count} sent after {timeout} s: {statuses(database)}")


def test_four_worker_processes_deliver_20000_messages_each_exactly_once(
    api: TestClient,
    database: Database,
    settings: Settings,
    start_sink: StartSink,
    tmp_path: Path,
) -> None:
    count = 20_000
    sinks = [start_sink(), start_sink()]
    add_server(api, "sink-1", sinks[0].port, role="all_emails")
    add_server(api, "sink-2", sinks[1].port, role="newsletters")
    letters = [
        Letter(
            "newsletter" if n % 2 else "event_triggered",
            f"reader{n}@example.com",
            "news@acme.example",
            f"Message {n}",
            "Hello",
        )
        for n in range(count)
    ]
    with database.session() as session:
        enqueue_many(session, api.workspace_id, letters, utcnow(), timedelta(days=1))  # type: ignore[attr-defined]
        expected = set(session.scalars(select(Delivery.message_id)))

    workers = start_workers(settings, tmp_path)
    try:
        wait_until_sent(database, count, timeout=240)
    finally:
        stop_workers(workers)

    time.sleep(0.2)  # the sinks close their last files
    taken = [sink.message_ids() for sink in sinks]
    assert sum(sum(counts.values()) for counts in taken) == count
    assert {message_id for counts in taken for message_id in counts} == expected
    assert [sum(counts.values()) for counts in taken] == [count // 2, count // 2]
    assert statuses(database) == {"sent": count}


def test_rate_connections_and_messages_per_connection_hold_across_worker_processes(
    api: TestClient, database: Database, settings: Settings, tmp_path: Path
) -> None:
    # A rate the machine sustains with two connections even when busy: the assertion is
    # about the limit, so the server's own speed must not be what holds the rate down.
    rate, count, per_connection = 50.0, 300, 20
    with RecordingSMTPServer() as smtp:
        add_server(
            api,
            "limited",
            smtp.port,
            max_connections=2,
            rate_limit_per_second=rate,
            max_messages_per_connection=per_connection,
        )
        message_ids = queue_messages(database, api.workspace_id, count)  # type: ignore[attr-defined]
        workers = start_workers(settings, tmp_path)
        try:
            wait_until_sent(database, count, timeout=60)
        finally:
            outputs = stop_workers(workers)
        arrivals = smtp.arrivals

        assert sorted(a.message_id for a in arrivals) == sorted(message_ids)
        assert observed_rate(arrivals) == pytest.approx(rate, rel=0.10)
        assert busiest_second(arrivals) <= rate * 1.2
        assert smtp.most_open <= 2
        assert max(smtp.messages_per_connection().values()) <= per_connection
        assert smtp.connections >= count // per_connection
    senders = [output for output in outputs if "status=sent" in output]
    assert len(senders) >= 2, "the mail should have been shared among the workers"
