"""`postyard serve --workers N`: delivery in worker processes of its own, which serve wakes
when it queues mail, starts again when one dies, and stops with itself, even when it is
killed, so that no worker outlives it; serve's /metrics sums their counters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from integration_helpers import add_local, queue
from prometheus_client.parser import text_string_to_metric_families

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.localsmtp import LocalSMTPServer, free_port
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

StartSmtp = Callable[..., LocalSMTPServer]
LONG_POLL = 30.0
"""Far longer than any test waits: a message that arrives was not found by a poll."""


def workers_of(pid: int) -> list[int]:
    """The pids of the `postyard worker --supervised` processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
        if parent == pid and b"--supervised" in command:
            found.append(int(stat.parent.name))
    return sorted(found)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def serve_with_workers(settings: Settings, database: Database, count: int) -> Iterator[TestClient]:
    """`postyard serve --workers count` in this process, for a new workspace."""
    with database.session() as session:
        created = create_workspace(session, "Acme", Plan.PREMIUM)
    app = create_app(
        Settings(**{**settings.__dict__, "worker_poll_seconds": LONG_POLL}),
        database,
        run_worker=True,
        worker_processes=count,
    )
    with TestClient(app, headers={"Authorization": f"Bearer {created.api_key}"}) as client:
        yield client


def test_worker_processes_deliver_what_serve_queues_without_waiting_out_their_poll(
    settings: Settings, database: Database, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp()
    with serve_with_workers(settings, database, 2) as api:
        wait_until(lambda: len(workers_of(os.getpid())) == 2, 30, "two worker processes")
        add_local(api, smtp)
        time.sleep(3.0)  # the workers are up, found nothing to do and settled into their poll
        for count in (1, 2, 3):
            queue(api, "newsletter", to=f"reader{count}@example.com")
            smtp.wait_for(count, timeout=10)
            time.sleep(0.2)
        children = workers_of(os.getpid())
        wait_until(lambda: sent_counted(api) == 3, 10, "serve's /metrics counting all three")
    wait_until(lambda: not any(map(is_running, children)), 30, "the workers stopped with serve")
    assert sorted(message.rcpt_tos for message in smtp.messages) == [
        (f"reader{count}@example.com",) for count in (1, 2, 3)
    ]


def test_a_worker_process_that_dies_is_started_again_and_delivers(
    settings: Settings, database: Database, start_smtp: StartSmtp
) -> None:
    smtp = start_smtp()
    with serve_with_workers(settings, database, 1) as api:
        wait_until(lambda: len(workers_of(os.getpid())) == 1, 30, "a worker process")
        [first] = workers_of(os.getpid())
        add_local(api, smtp)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: workers_of(os.getpid()) not in ([], [first]), 30, "a new worker process")
        queue(api, "newsletter")
        [message] = smtp.wait_for(1, timeout=20)
    assert message.rcpt_tos == ("reader@example.com",)


def test_worker_processes_stop_when_serve_is_killed(settings: Settings, tmp_path: Path) -> None:
    """A SIGKILLed serve cannot stop its workers: each sees its pipe from serve close, and
    stops on its own (status 0: gracefully)."""
    port = free_port()
    env = {**os.environ, **settings.to_env()}
    command = [sys.executable, "-m", "postyard", "serve", "--port", str(port), "--workers", "1"]
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(workers_of(serve.pid)) == 1, 60, "a worker process")
        [worker] = workers_of(serve.pid)
        wait_until(lambda: _answers(port), 60, "serve answering")
        serve.kill()
        serve.wait()
        wait_until(lambda: not is_running(worker), 30, "the orphaned worker stopped")
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    log_text = (tmp_path / "serve.log").read_text()
    assert "postyard serve has gone: stopping" in log_text, log_text[-2000:]


def sent_counted(api: TestClient) -> float:
    """`postyard_deliveries_total{outcome="sent"}` in serve's /metrics, summed over its labels:
    the worker processes' counts, gathered by serve."""
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "postyard_deliveries_total" and sample.labels["outcome"] == "sent"
    )


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/routing", timeout=1).status_code == 401
    except httpx.HTTPError:
        return False
