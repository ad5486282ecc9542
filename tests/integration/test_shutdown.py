"""Stopping a worker (SIGTERM) mid-batch: transactions under way finish, or are handed back
when the grace period runs out; the rest go back to the queue untried; nothing is left
`sending` under a live lease, nothing half-recorded."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from integration_helpers import add_server, queue
from sqlalchemy import select

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery
from postyard.delivery.worker import CUT_SHORT, Worker
from postyard.localsmtp import free_port
from postyard.metrics import Metrics
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

MESSAGES = 20
DATA_SECONDS = 1.0


class SlowSink:
    """An SMTP server that takes `delay` seconds to answer each DATA, then accepts it."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.port = free_port()
        self.message_ids: list[str] = []
        self.started = threading.Event()  # a DATA has begun
        self._lock = threading.Lock()
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, server_hostname="slow.localsmtp.invalid"
        )

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.started.set()
        await asyncio.sleep(self.delay)
        message = BytesParser(policy=default_policy).parsebytes(envelope.original_content or b"")
        with self._lock:
            self.message_ids.append(str(message["Message-ID"]))
        return "250 OK"

    def received(self) -> list[str]:
        with self._lock:
            return list(self.message_ids)

    def __enter__(self) -> SlowSink:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._controller.stop()


@pytest.fixture
def sink() -> Iterator[SlowSink]:
    with SlowSink(DATA_SECONDS) as server:
        yield server


@pytest.fixture
def sqlite_settings(tmp_path: Path, sqlite_template: Path) -> Settings:
    """SQLite only: the subprocess test gives the worker this database through the env."""
    path = tmp_path / "postyard.db"
    shutil.copy(sqlite_template, path)
    return Settings(
        database_url=f"sqlite:///{path}",
        secret_key=Fernet.generate_key().decode(),
        retry_base_seconds=60,
        worker_poll_seconds=0.05,
        smtp_timeout_seconds=10,
    )


def prepare(settings: Settings, database: Database, sink: SlowSink) -> None:
    """A workspace, a server (two connections) and MESSAGES queued newsletter messages."""
    with database.session() as session:
        created = create_workspace(session, "Acme", Plan.PREMIUM)
    headers = {"Authorization": f"Bearer {created.api_key}"}
    with TestClient(create_app(settings, database), headers=headers) as api:
        add_server(api, "slow", sink.port, max_connections=2)
        for i in range(MESSAGES):
            queue(api, "newsletter", to=f"reader{i}@example.com")


def rows(database: Database) -> list[Delivery]:
    with database.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def assert_nothing_lost(database: Database, sink: SlowSink) -> dict[str, list[Delivery]]:
    """Every row is sent (and received) or waiting, due now; none is held by a lease."""
    by_status: dict[str, list[Delivery]] = {}
    for row in rows(database):
        by_status.setdefault(row.status, []).append(row)
        assert row.lease_owner is None, row.id
    assert set(by_status) <= {"sent", "queued", "deferred"}, {
        k: len(v) for k, v in by_status.items()
    }
    received = sink.received()
    assert {row.message_id for row in by_status.get("sent", [])} <= set(received)
    for row in by_status.get("queued", []):
        assert row.attempts == 0, "an untried message must not count an attempt"
    return by_status


def test_in_process_stop_lets_transactions_finish_and_hands_the_rest_back(
    sqlite_settings: Settings, sink: SlowSink
) -> None:
    database = Database(sqlite_settings.database_url)
    try:
        prepare(sqlite_settings, database, sink)
        metrics = Metrics()
        worker = Worker(database, sqlite_settings, metrics=metrics, grace_seconds=10)

        async def run() -> float:
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            while not sink.started.is_set():
                await asyncio.sleep(0.01)
            stop.set()
            began = time.monotonic()
            await task
            return time.monotonic() - began

        took = asyncio.run(run())
        assert took < DATA_SECONDS + 2
        by_status = assert_nothing_lost(database, sink)
        # The two transactions under way finished; the other messages were never tried.
        assert len(by_status["sent"]) == 2
        assert len(by_status["queued"]) == MESSAGES - 2
        assert len(sink.received()) == 2
        assert metrics.released._value.get() == MESSAGES - 2
    finally:
        database.dispose()


def test_in_process_stop_cuts_transactions_at_the_deadline_and_hands_them_back(
    sqlite_settings: Settings, sink: SlowSink
) -> None:
    database = Database(sqlite_settings.database_url)
    try:
        prepare(sqlite_settings, database, sink)
        worker = Worker(database, sqlite_settings, grace_seconds=0.2)

        async def run() -> float:
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            while not sink.started.is_set():
                await asyncio.sleep(0.01)
            stop.set()
            began = time.monotonic()
            await task
            return time.monotonic() - began

        took = asyncio.run(run())
        assert took < DATA_SECONDS + 1
        by_status = assert_nothing_lost(database, sink)
        assert "sent" not in by_status
        cut = by_status["deferred"]
        assert len(cut) == 2
        for row in cut:  # the attempt counts, and it is due again at once
            assert row.attempts == 1
            assert row.last_error == CUT_SHORT
        assert len(by_status["queued"]) == MESSAGES - 2
    finally:
        database.dispose()


def postyard_command() -> list[str]:
    script = Path(sys.executable).parent / "postyard"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from postyard.cli import app; app()"]


@pytest.mark.parametrize("grace", [10.0, 0.3])
def test_sigterm_stops_a_worker_process_mid_batch_without_losing_a_message(
    sqlite_settings: Settings, sink: SlowSink, grace: float
) -> None:
    database = Database(sqlite_settings.database_url)
    try:
        prepare(sqlite_settings, database, sink)
        metrics_port = free_port()
        env = {
            **os.environ,
            "POSTYARD_DATABASE_URL": sqlite_settings.database_url,
            "POSTYARD_SECRET_KEY": sqlite_settings.secret_key or "",
            "POSTYARD_WORKER_POLL_SECONDS": "0.05",
            "POSTYARD_RETRY_BASE_SECONDS": "60",
        }
        command = [
            *postyard_command(),
            "worker",
            "--grace",
            str(grace),
            "--metrics-port",
            str(metrics_port),
        ]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            assert sink.started.wait(20), "the worker never began a transaction"
            with urllib.request.urlopen(
                f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
            ) as response:
                exported = response.read().decode()
            assert 'postyard_queue_depth{status="sending"} 20.0' in exported
            process.send_signal(signal.SIGTERM)
            began = time.monotonic()
            output, _ = process.communicate(timeout=15)
            took = time.monotonic() - began
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, output
        assert took < DATA_SECONDS + min(grace, DATA_SECONDS) + 3, output
        by_status = assert_nothing_lost(database, sink)
        if grace > DATA_SECONDS:
            assert len(by_status.get("sent", [])) == 2, output
        else:
            assert [row.last_error for row in by_status["deferred"]] == [CUT_SHORT] * 2
        assert len(by_status.get("queued", [])) == MESSAGES - 2
        assert "SIGTERM received: stopping" in output
        assert "status=released" in output
        assert "example.com" not in output, "recipient addresses must not be logged"
    finally:
        database.dispose()
