"""What the benchmarks share: throw-away databases, free ports, a `postyard serve` subprocess,
memory and CPU readings, and the JSON-lines record with the run's provenance.

The scripts in bench/ are run as files (`.venv/bin/python bench/NAME.py`), so Python puts
bench/ first on the import path and `import common` finds this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import psycopg
from sqlalchemy import make_url
from sqlalchemy.engine import URL

from postyard.localsmtp import free_port, wait_until_listening

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
LOCALHOST = "127.0.0.1"
POSTYARD = REPO_DIR / ".venv" / "bin" / "postyard"
SINK_PATH = "/usr/sbin/smtp-sink"
SOURCE_PATH = "/usr/sbin/smtp-source"


class BenchError(Exception):
    """A precondition the benchmark cannot run without; `main` turns it into exit status 2."""


def terminate(_signum: int, _frame: FrameType | None) -> None:
    """Treat SIGTERM like Ctrl-C, so that unwinding stops servers and drops databases."""
    raise KeyboardInterrupt


def install_sigterm() -> None:
    signal.signal(signal.SIGTERM, terminate)


# --------------------------------------------------------------------------- database


@dataclasses.dataclass(frozen=True)
class BenchDatabase:
    url: str
    backend: str
    version: str


@contextmanager
def bench_database(requested: str | None, workdir: Path) -> Iterator[BenchDatabase]:
    """A database nobody else uses, removed afterwards.

    On PostgreSQL the URL names the server (and the database to connect to for
    administration); the benchmark creates `postyard_bench_<random>` there and drops it,
    so it can never write into a database that holds someone's data.
    """
    if requested is None:
        path = workdir / "postyard-bench.db"
        yield BenchDatabase(f"sqlite:///{path}", "sqlite", sqlite3.sqlite_version)
        return
    url = make_url(requested)
    if url.get_backend_name() == "sqlite":
        if url.database and Path(url.database).exists() and Path(url.database).stat().st_size:
            raise BenchError(f"{url.database} exists: give a path to a new SQLite file")
        yield BenchDatabase(requested, "sqlite", sqlite3.sqlite_version)
        return
    if url.get_backend_name() != "postgresql":
        raise BenchError(f"unsupported database URL {requested!r}: use sqlite or postgresql")
    yield from _postgres_database(url)


def _postgres_database(admin: URL) -> Iterator[BenchDatabase]:
    name = f"postyard_bench_{uuid.uuid4().hex[:12]}"
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        raise BenchError(f"cannot reach PostgreSQL at {admin.host}:{admin.port}: {error}") from None
    with connection:
        number = connection.info.server_version  # e.g. 150004 for 15.4
        version = f"{number // 10000}.{number % 10000}"
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        url = admin.set(drivername="postgresql+psycopg", database=name)
        yield BenchDatabase(url.render_as_string(hide_password=False), "postgresql", version)
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- measuring


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory; Linux reports ru_maxrss in KiB."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1024 / 1024


def current_rss_mb(pid: int | None = None) -> float:
    """Resident memory now (not the high-water mark), from /proc; 0.0 where there is none."""
    try:
        fields = Path(f"/proc/{pid or 'self'}/statm").read_text().split()
    except OSError:
        return 0.0
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (the worker's database thread too).

    Unlike wall-clock time it barely moves when other jobs share the machine, so
    CPU time per message is the figure to compare across runs on a busy host.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (e.g. the `postyard serve` child), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles and the maximum, named p50, p95, ..., max."""
    ordered = sorted(values)
    if not ordered:
        return {}
    found = {
        f"p{point}": ordered[max(0, min(len(ordered) - 1, -(-point * len(ordered) // 100) - 1))]
        for point in points
    }
    found["max"] = ordered[-1]
    return found


# --------------------------------------------------------------------------- records


def git_commit() -> str | None:
    """The checked-out commit, read from .git directly (no git process, no lock taken);
    `git rev-parse` only when the repository is laid out in a way this does not follow."""
    git_dir = REPO_DIR / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        loose = git_dir / ref
        if loose.exists():
            return loose.read_text().strip()[:7]
        for line in (git_dir / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:7]
    except OSError:
        pass
    if shutil.which("git") is None:
        return None
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def source_digest() -> str:
    """A fingerprint of the Python sources measured: the commit alone does not say whether the
    working tree had uncommitted edits, and two runs with equal digests ran the same code."""
    digest = hashlib.sha256()
    for path in sorted((REPO_DIR / "src" / "postyard").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_DIR)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def versions(packages: Sequence[str] = ("sqlalchemy", "aiosmtplib", "psycopg")) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine(load_before: float) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_before": round(load_before, 2),
    }


def provenance(
    benchmark: str, digest: str, load_before: float, packages: Sequence[str] | None = None
) -> dict[str, Any]:
    """The fields every record starts with: what ran, when, on which code and machine."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "source_digest": digest,
        "machine": machine(load_before),
        "versions": versions(packages) if packages is not None else versions(),
    }


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        file.write(json.dumps(record, sort_keys=True) + "\n")
    print(f"  recorded in {path}")


def table(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """A title and two aligned columns, as the summaries print."""
    width = max(len(name) for name, _ in rows)
    return "\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows)])


# --------------------------------------------------------------------------- smtp references


@dataclasses.dataclass
class Sink:
    """One running smtp-sink; its `-c` counters are read back from the file it writes."""

    process: subprocess.Popen[bytes]
    port: int
    counter_file: Path

    def delivered(self) -> int:
        """Messages received so far ("mesg=" of the last counter line smtp-sink printed).

        smtp-sink rewrites its counters after every "." and QUIT as
        `sess=N quit=N mesg=N` terminated by CR, flushed each time, so the tail is current.
        """
        with self.counter_file.open("rb") as file:
            file.seek(0, os.SEEK_END)
            start = max(file.tell() - 256, 0)
            file.seek(start)
            tail = file.read().decode("ascii", "replace")
        # Only whole lines: the text after the last CR may be a line still being written,
        # and the first may have been cut by the seek.
        lines = tail.split("\r")[1 if start else 0 : -1]
        lines = [line for line in lines if "mesg=" in line]
        if not lines:
            return 0
        fields = dict(part.split("=", 1) for part in lines[-1].split() if "=" in part)
        return int(fields.get("mesg", "0"))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers: a sink must never outlive the benchmark."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_sink(workdir: Path, index: int, stack: ExitStack) -> Sink:
    """Start smtp-sink on a free port, retrying if another process takes the port first.

    `-u nobody` is required when running as root (smtp-sink drops privileges after binding);
    the backlog of 1000 keeps bursts of new connections from being refused.
    """
    last_error = ""
    for attempt in range(5):
        port = free_port()
        counter_file = workdir / f"sink{index}-{attempt}.counters"
        command = [SINK_PATH, "-c", f"{LOCALHOST}:{port}", "1000"]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "nobody"]
        with counter_file.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
            )
        sink = Sink(process, port, counter_file)
        stack.callback(sink.stop)
        if wait_until_listening(process, port):
            return sink
        sink.stop()
        assert process.stderr is not None
        last_error = process.stderr.read().decode(errors="replace").strip()
    raise BenchError(f"smtp-sink did not start: {last_error or 'not listening after 5 s'}")


class Letterlike(Protocol):
    """What the naive loop sends of a message (postyard's `Letter` has these fields)."""

    @property
    def from_address(self) -> str: ...
    @property
    def to_address(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def text_body(self) -> str | None: ...


def run_smtp_source(sink: Sink, messages: int, size: int, sessions: int) -> dict[str, Any]:
    """Postfix's C generator against the same sink: the best this machine and sink allow."""
    before = sink.delivered()
    command = [
        SOURCE_PATH, "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
        f"{LOCALHOST}:{sink.port}",
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - started
    time.sleep(0.05)  # the sink writes its last counter line just after the final QUIT
    received = sink.delivered() - before
    return {
        "command": " ".join(command),
        "sessions": sessions,
        "seconds": round(seconds, 4),
        "msgs_per_s": round(messages / seconds, 1),
        "exit_status": result.returncode,
        "received": received,
        "error": (result.stderr.strip()[-500:] or None) if result.returncode else None,
    }


def run_naive(sink: Sink, letters: Iterable[Letterlike]) -> dict[str, Any]:
    """The simplest correct Python sender: smtplib, EmailMessage, one connection, in order.

    Headers match what the worker writes (From, To, Subject, Date, Message-ID), so the gap
    to Postyard comes from how each sends (outbox, routing, recording, concurrency), not
    from a smaller message.
    """
    before = sink.delivered()
    count = 0
    started = time.perf_counter()
    with smtplib.SMTP(LOCALHOST, sink.port, local_hostname="bench.example") as client:
        for letter in letters:
            count += 1
            message = EmailMessage()
            message["From"] = letter.from_address
            message["To"] = letter.to_address
            message["Subject"] = letter.subject
            message["Date"] = format_datetime(datetime.now(UTC))
            message["Message-ID"] = make_msgid(domain="acme.example")
            message.set_content(letter.text_body or "")
            client.send_message(message)
    seconds = time.perf_counter() - started
    time.sleep(0.05)
    return {
        "seconds": round(seconds, 4),
        "messages": count,
        "msgs_per_s": round(count / seconds, 1),
        "received": sink.delivered() - before,
    }


def check_tools(need_source: bool) -> None:
    needed = [SINK_PATH, SOURCE_PATH] if need_source else [SINK_PATH]
    missing = [path for path in needed if not os.access(path, os.X_OK)]
    if missing:
        raise BenchError(
            f"{' and '.join(missing)} not found: install the Debian package postfix "
            "(apt-get install postfix), which ships smtp-sink and smtp-source"
        )


# --------------------------------------------------------------------------- postyard serve


@dataclasses.dataclass
class Serve:
    """A running `postyard serve` on a free port, and the workspace created for the bench."""

    process: subprocess.Popen[bytes]
    base_url: str
    api_key: str
    workspace_id: int
    log_path: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def stop(self) -> int | None:
        """SIGINT (uvicorn's clean shutdown: the worker and jobs stop between batches),
        SIGKILL if it lingers; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode


def serve_environment(database_url: str, workdir: Path, **settings: str) -> dict[str, str]:
    """The environment for `postyard` commands: this bench's database and a fresh key."""
    from cryptography.fernet import Fernet

    env = {key: value for key, value in os.environ.items() if not key.startswith("POSTYARD_")}
    env.update(
        POSTYARD_DATABASE_URL=database_url,
        POSTYARD_SECRET_KEY=Fernet.generate_key().decode(),
        POSTYARD_SECRET_KEY_FILE=str(workdir / "postyard.key"),
    )
    env.update({f"POSTYARD_{name.upper()}": value for name, value in settings.items()})
    return env


@contextmanager
def postyard_serve(
    env: Mapping[str, str],
    workdir: Path,
    plan: str = "standard",
    timeout: float = 60,
    serve_args: Sequence[str] = (),
) -> Iterator[Serve]:
    """`postyard workspace create --json`, then `postyard serve [serve_args]` on a free port,
    waited for until it answers; stopped cleanly (SIGINT) whatever happens."""
    if not POSTYARD.exists():
        raise BenchError(f"{POSTYARD} not found: install the project (make install)")
    created = subprocess.run(
        [str(POSTYARD), "workspace", "create", "bench", "--plan", plan, "--json"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if created.returncode != 0:
        raise BenchError(f"postyard workspace create failed: {created.stderr.strip()[-500:]}")
    workspace = json.loads(created.stdout.strip().splitlines()[-1])
    port = free_port()
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(POSTYARD), "serve", "--host", LOCALHOST, "--port", str(port), *serve_args],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    serve = Serve(
        process, f"http://{LOCALHOST}:{port}", workspace["api_key"], workspace["workspace_id"],
        log_path,
    )  # fmt: skip
    try:
        _wait_answering(serve, timeout)
        yield serve
    finally:
        serve.stop()


def _wait_answering(serve: Serve, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serve.process.poll() is not None:
            tail = serve.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"postyard serve exited with {serve.process.returncode}:\n{tail}")
        try:
            response = httpx.get(f"{serve.base_url}/v1/routing", headers=serve.headers, timeout=2)
            if response.status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise BenchError(f"postyard serve did not answer within {timeout:g} s")


def run_main(
    name: str,
    records: Callable[[], Iterable[dict[str, Any]]],
    report: Callable[[dict[str, Any]], None],
    results: Path,
    keep: bool,
) -> int:
    """What every benchmark's `main` does around its runs.

    The worker logs a line per delivery: at benchmark volumes that would time the
    logging, not the work, so Postyard's logs are kept to warnings. SIGTERM ends
    a run like Ctrl-C, with servers and databases cleaned up. Each record is
    reported, then appended to `results` when `keep`. Exit status: 0 all runs
    ok, 1 a run found problems, 2 the benchmark could not run, 130 interrupted.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("postyard").setLevel(logging.WARNING)
    install_sigterm()
    ok = True
    try:
        for record in records():
            report(record)
            if keep:
                append_record(results, record)
            ok = ok and bool(record["ok"])
    except BenchError as error:
        print(f"bench/{name}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bench/{name}: interrupted; servers and databases cleaned up", file=sys.stderr)
        return 130
    return 0 if ok else 1
