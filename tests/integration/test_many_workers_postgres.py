"""Scale-out on PostgreSQL (DESIGN §6): several `postyard worker` processes share one outbox
and one set of SMTP servers; every message is accepted exactly once, and each server's
limits hold across all of them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from integration_helpers import add_server
from recording_smtp import RecordingSMTPServer, busiest_second, observed_rate
from sqlalchemy import func, select
from test_server_limits import queue_messages, statuses

from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery
from postyard.delivery.outbox import Letter, enqueue_many
from postyard.localsmtp import free_port

WORKERS = 4
MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)

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


class DumpingSink:
    """Postfix smtp-sink appending each message it accepts to a dump file."""

    def __init__(self, path: str) -> None:
        # smtp-sink drops to `nobody` when started as root: the directory and its parents
        # must be open to it, which pytest's own temporary directories are not.
        self.directory = Path(tempfile.mkdtemp(prefix="postyard-sink-"))
        self.directory.chmod(0o777)
        self.port = free_port()
        command = [path, "-d", f"{self.directory}/dump", f"127.0.0.1:{self.port}", "1000"]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "nobody"]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE)
        time.sleep(0.3)
        assert self.process.poll() is None, self.process.stderr.read()  # type: ignore[union-attr]

    def message_ids(self) -> list[bytes]:
        """One file per message: smtp-sink names each after the template and a random number."""
        return [
            message_id
            for dump in self.directory.glob("dump*")
            for message_id in MESSAGE_ID.findall(dump.read_bytes())
        ]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.directory)


@pytest.fixture
def sinks(smtp_sink: str) -> Iterator[list[DumpingSink]]:
    started = [DumpingSink(smtp_sink) for _ in range(2)]
    yield started
    for sink in started:
        sink.stop()


def test_four_worker_processes_deliver_20000_messages_each_exactly_once(
    api: TestClient,
    database: Database,
    settings: Settings,
    sinks: list[DumpingSink],
    tmp_path: Path,
) -> None:
    count = 20_000
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
        expected = {
            message_id.encode() for message_id in session.scalars(select(Delivery.message_id))
        }

    workers = start_workers(settings, tmp_path)
    try:
        wait_until_sent(database, count, timeout=240)
    finally:
        stop_workers(workers)

    time.sleep(0.2)  # the sinks close their last files
    received = [message_id for sink in sinks for message_id in sink.message_ids()]
    assert len(received) == count
    assert set(received) == expected
    assert [len(sink.message_ids()) for sink in sinks] == [count // 2, count // 2]
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
