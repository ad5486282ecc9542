"""Delivery workers in processes of their own, started and watched by `postyard serve`.

One Python process runs one core's worth of work at a time. In `postyard serve` a large
newsletter's fan-out (rendering, writing outbox rows) and its delivery (SMTP, recording
outcomes) would share that core; with `--workers N`, N `postyard worker --supervised`
processes deliver, and `serve` keeps the API, the web UI and the jobs.

Each child reads its settings from the environment `serve` gives it (`Settings.to_env`),
so both sides see the same database, keys and limits. Its standard input is a pipe from
`serve`: a byte on it wakes the child when `serve` has queued mail, and its end (`serve`
gone, even killed) stops the child gracefully, so no worker outlives the server that
started it. A child that exits on its own is started again, after a pause that grows
while it keeps failing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from postyard.config import Settings

log = logging.getLogger(__name__)

RESTART_PAUSE_SECONDS = 1.0
MAX_RESTART_PAUSE_SECONDS = 30.0
WATCH_SECONDS = 0.5
"""How often exits are looked for; a child that ends is restarted within this."""
STEADY_SECONDS = 60.0
"""A child that ran this long before it ended is started again after the shortest pause."""
KILL_AFTER_SECONDS = 10.0
"""How long past its grace period a stopping child may take before it is killed."""


class WorkerProcess:
    """One supervised `postyard worker` process."""

    def __init__(
        self, number: int, settings: Settings, grace_seconds: float, metrics_dir: Path
    ) -> None:
        self.number = number
        self.settings = settings
        self.grace_seconds = grace_seconds
        self.metrics_dir = metrics_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.restart_pause = RESTART_PAUSE_SECONDS
        self.started_at = 0.0

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "postyard",
            "worker",
            "--supervised",
            "--grace",
            str(self.grace_seconds),
        ]
        env = {
            **os.environ,
            **self.settings.to_env(),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, env=env)
        assert self.process.stdin is not None
        os.set_blocking(self.process.stdin.fileno(), False)
        self.started_at = time.monotonic()
        log.info("delivery worker process %s started (pid %s)", self.number, self.process.pid)

    def wake(self) -> None:
        """Tell the child mail is due; a full pipe already holds a wake-up, so none is lost."""
        if self.process is not None and self.running and self.process.stdin is not None:
            with suppress(BlockingIOError, BrokenPipeError, ValueError, OSError):
                os.write(self.process.stdin.fileno(), b"\n")

    def exited(self) -> int | None:
        """The exit status of a child that has ended, else None."""
        return None if self.process is None else self.process.poll()

    @property
    def running(self) -> bool:
        return self.process is not None and self.exited() is None

    def stop(self) -> None:
        """Ask the child to stop: it finishes or hands back what is in flight (SIGTERM)."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process is not None and self.running:
            log.warning("delivery worker process %s did not stop in time: killed", self.number)
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            with suppress(OSError):
                self.process.stdin.close()


class WorkerProcesses:
    """The delivery worker processes of one `postyard serve`; their counters go to files in
    `metrics_dir`, which serve's `GET /metrics` sums (`Metrics.gather_processes`)."""

    def __init__(
        self, count: int, settings: Settings, grace_seconds: float, metrics_dir: Path
    ) -> None:
        self.children = [
            WorkerProcess(number, settings, grace_seconds, metrics_dir)
            for number in range(1, count + 1)
        ]
        self.grace_seconds = grace_seconds

    def wake(self) -> None:
        """Safe to call from any thread: each wake-up is one write to each child's pipe."""
        for child in self.children:
            child.wake()

    async def run(self, stop: asyncio.Event) -> None:
        """Start the children, start again any that ends, and stop them all once `stop`
        is set, waiting for them to finish their transactions."""
        for child in self.children:
            child.start()
        try:
            while not stop.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), WATCH_SECONDS)
                if not stop.is_set():
                    await self._restart_ended(stop)
        finally:
            await self._stop_all()

    async def _restart_ended(self, stop: asyncio.Event) -> None:
        for child in self.children:
            status = child.exited()
            if status is None:
                continue
            if time.monotonic() - child.started_at >= STEADY_SECONDS:
                child.restart_pause = RESTART_PAUSE_SECONDS
            log.error(
                "delivery worker process %s exited with status %s; starting it again in %g s",
                child.number,
                status,
                child.restart_pause,
            )
            child.close()
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), child.restart_pause)
            if stop.is_set():
                return
            child.restart_pause = min(child.restart_pause * 2, MAX_RESTART_PAUSE_SECONDS)
            child.start()

    async def _stop_all(self) -> None:
        for child in self.children:
            child.stop()
        deadline = asyncio.get_running_loop().time() + self.grace_seconds + KILL_AFTER_SECONDS
        while any(child.running for child in self.children):
            if asyncio.get_running_loop().time() >= deadline:
                for child in self.children:
                    child.kill()
                break
            await asyncio.sleep(0.1)
        for child in self.children:
            child.close()


def listen_to_supervisor(
    loop: asyncio.AbstractEventLoop, wake: Callable[[], None], stop: Callable[[], None]
) -> None:
    """In a supervised worker: wake on each byte from `serve`, stop when the pipe ends."""
    descriptor = sys.stdin.fileno()
    os.set_blocking(descriptor, False)

    def readable() -> None:
        try:
            data = os.read(descriptor, 4096)
        except BlockingIOError:
            return
        if data:
            wake()
            return
        loop.remove_reader(descriptor)
        log.info("postyard serve has gone: stopping")
        stop()

    loop.add_reader(descriptor, readable)
