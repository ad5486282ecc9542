"""Newsletter throughput end to end: `POST /v1/campaigns/{id}/send` until every message of a
personalised newsletter to N people has been accepted by the SMTP servers.

Run from the repository root::

    .venv/bin/python bench/throughput.py [--people 100000] [--naive-messages 10000]
        [--database-url URL] [--max-connections N]

What it does, and why:

* Starts two Postfix ``smtp-sink`` processes (C servers that accept and discard mail far
  faster than Postyard sends, so the receiving side is not the limit) and a real
  ``postyard serve`` (API, jobs and delivery worker in one process, as users run it) on a
  fresh database, SQLite by default, with a workspace from ``postyard workspace create``.
* Configures everything through the REST API: server 1 ``all_emails`` on sink 1, server 2
  ``newsletters`` on sink 2, so the newsletter's route is resolved (R5) on the measured path
  and sink 1 must receive nothing; N people through ``/v1/batch`` (1,000 per request), each
  with the attributes the template uses; a newsletter to ``{"all": true}`` with the ~2 KB
  Liquid template of ``bench/fanout.py``. All of that is set-up, before the clock starts.
* Times ``POST /v1/campaigns/{id}/send`` until the sinks' counters add up to N: fan-out
  (one outbox row per person) and delivery run inside ``serve`` as they do in production.
  The serve process's CPU time and its memory (the process and any children) are read from
  /proc every 50 ms meanwhile; afterwards ``/v1/campaigns/{id}`` must count N sent.
* In the same run, on sink 2: ``smtp-source -d -s 10 -m N -l 2000`` (Postfix's C load
  generator: the wire's practical limit here) and the naive Python loop of ``common.py``
  (smtplib and EmailMessage over one connection) on ``--naive-messages`` messages.
* Prints the rates and ratios (targets: Postyard >= 25 % of smtp-source and >= 5 times the
  naive loop; peak RSS < 300 MB) and appends a JSON line to ``bench/results/throughput.jsonl``.

Exit status: 0 when all N were accepted where routing says, 1 otherwise, 2 when a tool or the
database is missing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from common import (
    LOCALHOST,
    REPO_DIR,
    RESULTS_DIR,
    BenchError,
    Serve,
    Sink,
    bench_database,
    check_tools,
    postyard_serve,
    process_cpu_seconds,
    provenance,
    run_main,
    run_naive,
    run_smtp_source,
    serve_environment,
    source_digest,
    start_sink,
    table,
)
from delivery import Letters, traffic_for
from fanout import message_template, person_rows

DEFAULT_RESULTS = RESULTS_DIR / "throughput.jsonl"
BATCH = 1000
TARGET_SOURCE_PERCENT = 25
TARGET_NAIVE_TIMES = 5
TARGET_RSS_MB = 300


class TreeSampler:
    """Samples a process and its descendants from /proc: the highest total resident memory
    seen, and their CPU time (so children, should serve start any, are counted too)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.highest_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def pids(self) -> list[int]:
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo.extend(int(child) for child in task.read_text().split())
                except OSError:
                    continue
        return found

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(pid) for pid in self.pids())

    def own_cpu_seconds(self) -> float:
        """The CPU time of the process itself, without its children's."""
        return process_cpu_seconds(self.pid)

    def peak_mb(self) -> float:
        """The highest of: the sampled total, and the kernel's high-water marks summed."""
        return max(self.highest_mb, sum(_status_mb(pid, "VmHWM") for pid in self.pids()))

    def _sample(self) -> None:
        total = sum(_status_mb(pid, "VmRSS") for pid in self.pids())
        self.highest_mb = max(self.highest_mb, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


def _status_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@contextmanager
def py_spy(pid: int, path: Path) -> Iterator[None]:
    """Samples `postyard serve` and its worker processes (all threads, idle time left out)
    into collapsed stacks."""
    command = [str(REPO_DIR / ".venv" / "bin" / "py-spy"), "record", "--pid", str(pid)]
    command += ["--format", "raw", "--threads", "--subprocesses", "--rate", "200"]
    command += ["--output", str(path)]
    try:
        profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy") from None
    try:
        yield
    finally:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(timeout=60)


def api(client: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    response = client.request(method, path, json=body)
    if response.status_code >= 400:
        raise BenchError(f"{method} {path}: {response.status_code} {response.text[:300]}")
    return response.json() if response.content else None


def load_people(client: httpx.Client, count: int) -> None:
    """N people through /v1/batch, a request of 1,000 identify operations at a time."""
    for chunk in person_rows(0, count):
        for start in range(0, len(chunk), BATCH):
            operations = [
                {
                    "type": "identify",
                    "person_id": row["person_id"],
                    "attributes": {"email": row["email"], **row["attributes"]},
                }
                for row in chunk[start : start + BATCH]
            ]
            answer = api(client, "POST", "/v1/batch", {"batch": operations})
            failed = [result for result in answer["results"] if not result.get("ok", True)]
            if failed:
                raise BenchError(f"/v1/batch refused operations: {failed[:3]}")


def configure(client: httpx.Client, sinks: Sequence[Sink], args: argparse.Namespace) -> int:
    """The two servers and the newsletter; returns the campaign's id."""
    for index, (sink, role) in enumerate(zip(sinks, ("all_emails", "newsletters"), strict=True)):
        server = {
            "name": f"sink-{index + 1}",
            "host": LOCALHOST,
            "port": sink.port,
            "security": "none",
            "role": role,
        }
        if args.max_connections:
            server["max_connections"] = args.max_connections
        api(client, "POST", "/v1/smtp_servers", server)
    campaign = api(
        client,
        "POST",
        "/v1/campaigns",
        {
            "name": "Throughput newsletter",
            "type": "newsletter",
            "audience": {"all": True},
            "message": message_template(args.size),
        },
    )
    return int(campaign["id"])


@dataclass(frozen=True)
class Timeline:
    seconds: float
    """From the send until the sinks counted every message."""
    queued_seconds: float | None
    """From the send until the campaign was `sent` (every message queued): when this is close
    to `seconds`, fan-out set the pace; when far below, delivery did."""


def wait_received(
    campaign_state: Callable[[], str],
    sinks: Sequence[Sink],
    count: int,
    serve: Serve,
    timeout: float,
) -> Timeline:
    """Wait until the sinks have counted `count` messages between them, noting when fan-out
    finished on the way (the campaign's state, read twice a second)."""
    started = time.perf_counter()
    queued: float | None = None
    next_look = started
    while sum(sink.delivered() for sink in sinks) < count:
        if serve.process.poll() is not None:
            raise BenchError(f"postyard serve exited with {serve.process.returncode}")
        now = time.perf_counter()
        if now - started > timeout:
            break
        if queued is None and now >= next_look:
            next_look = now + 0.5
            if campaign_state() == "sent":
                queued = now - started
        time.sleep(0.02)
    return Timeline(time.perf_counter() - started, queued)


@contextmanager
def campaign_state_reader(database_url: str, campaign_id: int) -> Iterator[Callable[[], str]]:
    """The campaign's state, read from the database itself: `GET /v1/campaigns/{id}` also
    counts the campaign's deliveries, and at twice a second those counts took a third of
    serve's CPU during a 100,000-message send, slowing what is measured."""
    engine = create_engine(database_url)
    statement = text("SELECT state FROM campaigns WHERE id = :id")

    def state() -> str:
        with engine.connect() as connection:
            return str(connection.execute(statement, {"id": campaign_id}).scalar_one())

    try:
        yield state
    finally:
        engine.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    digest = source_digest()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="postyard-bench-")))
        sinks = [start_sink(workdir, index, stack) for index in (1, 2)]
        db = stack.enter_context(bench_database(args.database_url, workdir))
        env = serve_environment(db.url, workdir, **_serve_settings(args))
        serve = stack.enter_context(
            postyard_serve(
                env, workdir, plan="premium", serve_args=("--workers", str(args.serve_workers))
            )
        )
        client = stack.enter_context(
            httpx.Client(base_url=serve.base_url, headers=serve.headers, timeout=120)
        )
        started = time.perf_counter()
        campaign_id = configure(client, sinks, args)
        load_people(client, args.people)
        setup_seconds = time.perf_counter() - started

        state = stack.enter_context(campaign_state_reader(db.url, campaign_id))
        load_before = os.getloadavg()[0]
        pid = serve.process.pid
        if args.profile:
            stack.enter_context(py_spy(pid, args.profile))
        with TreeSampler(pid) as sampler:
            rss_before = sampler.peak_mb()
            cpu_before = sampler.cpu_seconds()
            own_cpu_before = sampler.own_cpu_seconds()
            started = time.perf_counter()
            api(client, "POST", f"/v1/campaigns/{campaign_id}/send", {})
            timeline = wait_received(state, sinks, args.people, serve, args.timeout)
            cpu = sampler.cpu_seconds() - cpu_before
            own_cpu = sampler.own_cpu_seconds() - own_cpu_before
        load_after = os.getloadavg()[0]
        received = [sink.delivered() for sink in sinks]
        counts = _sent_counts(client, campaign_id, args.people)
        peak_mb = sampler.peak_mb()

        source = run_smtp_source(sinks[1], args.people, args.size, args.source_sessions)
        letters = Letters(args.naive_messages, args.size, traffic_for(2))
        naive = run_naive(sinks[1], letters)

    problems = []
    if received != [0, args.people]:
        problems.append(f"sinks received {received}, expected [0, {args.people}]")
    if counts.get("sent") != args.people:
        problems.append(f"campaign counts {counts}")
    if source["received"] != args.people:
        problems.append(f"smtp-source: sink received {source['received']}")
    if naive["received"] != args.naive_messages:
        problems.append(f"naive loop: sink received {naive['received']}")
    seconds = timeline.seconds
    rate = args.people / seconds
    return {
        **provenance("throughput", digest, load_before),
        "database": {"backend": db.backend, "version": db.version},
        "people": args.people,
        "template_size": args.size,
        "max_connections": args.max_connections or 4,
        "serve_workers": args.serve_workers,
        "setup_seconds": round(setup_seconds, 2),
        "seconds": round(seconds, 3),
        "queued_seconds": (
            None if timeline.queued_seconds is None else round(timeline.queued_seconds, 3)
        ),
        "msgs_per_s": round(rate, 1),
        "serve_cpu_seconds": round(cpu, 3),
        "cpu_us_per_msg": round(cpu / args.people * 1e6, 1),
        "serve_own_cpu_us_per_msg": round(own_cpu / args.people * 1e6, 1),
        "serve_rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "load_after": round(load_after, 2),
        "smtp_source": source,
        "source_percent": round(100 * rate / source["msgs_per_s"], 1),
        "naive": naive,
        "naive_times": round(rate / naive["msgs_per_s"], 2),
        "sink_received": received,
        "campaign_counts": counts,
        "problems": problems,
        "ok": not problems,
        "note": args.note,
    }


def _serve_settings(args: argparse.Namespace) -> dict[str, str]:
    return {"worker_batch_size": str(args.batch_size)} if args.batch_size else {}


def _sent_counts(client: httpx.Client, campaign_id: int, expected: int) -> dict[str, int]:
    """The campaign's delivery counts, once the last outcomes are recorded (within ~2 s)."""
    deadline = time.monotonic() + 10
    while True:
        counts = api(client, "GET", f"/v1/campaigns/{campaign_id}").get("counts") or {}
        by_status = counts.get("by_status", {})
        if by_status.get("sent") == expected or time.monotonic() > deadline:
            return {key: value for key, value in by_status.items() if value}
        time.sleep(0.2)


def _seconds_or_dash(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def summary(r: dict[str, Any]) -> str:
    source, naive = r["smtp_source"], r["naive"]

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "below target"

    rows: list[tuple[str, str]] = [
        ("database", f"{r['database']['backend']} {r['database']['version']}"),
        ("people", f"{r['people']:,} (set-up through the API {r['setup_seconds']:.0f} s)"),
        ("serve --workers", str(r.get("serve_workers", 0))),
        ("send to all accepted", f"{r['seconds']:.1f} s"),
        ("send to all queued", _seconds_or_dash(r.get("queued_seconds"))),
        ("Postyard", f"{r['msgs_per_s']:,.0f} msg/s"),
        (
            "serve CPU per message",
            f"{r['cpu_us_per_msg']:,.0f} us ({r['serve_cpu_seconds']:.1f} s), of which serve's own "
            f"process {r['serve_own_cpu_us_per_msg']:,.0f} us",
        ),
        ("smtp-source -s 10", f"{source['msgs_per_s']:,.0f} msg/s"),
        ("naive smtplib", f"{naive['msgs_per_s']:,.0f} msg/s ({naive['messages']:,} messages)"),
        (
            "Postyard / smtp-source",
            f"{r['source_percent']:.1f} % "
            f"({verdict(r['source_percent'] >= TARGET_SOURCE_PERCENT)}: >= 25 %)",
        ),
        (
            "Postyard / naive",
            f"{r['naive_times']:.2f} x ({verdict(r['naive_times'] >= TARGET_NAIVE_TIMES)}: >= 5 x)",
        ),
        (
            "peak RSS, serve + children",
            f"{r['peak_rss_mb']:.0f} MB ({r['serve_rss_before_mb']:.0f} MB before the send; "
            f"{verdict(r['peak_rss_mb'] < TARGET_RSS_MB)}: < 300 MB)",
        ),
        ("load before / after", f"{r['machine']['load_before']:.2f} / {r['load_after']:.2f}"),
        ("sinks received", ", ".join(f"{count:,}" for count in r["sink_received"])),
        ("verdict", "OK" if r["ok"] else "FAILED: " + "; ".join(r["problems"])),
    ]
    return table("Postyard newsletter throughput benchmark", rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=100_000, help="audience size (100000)")
    parser.add_argument(
        "--naive-messages", type=int, default=10_000, help="messages the naive loop sends (10000)"
    )
    parser.add_argument("--size", type=int, default=2000, help="text bytes per message (2000)")
    parser.add_argument(
        "--database-url",
        help="SQLite URL of a new file, or a PostgreSQL server URL on which a throw-away "
        "database is created and dropped (default: SQLite in a temporary directory)",
    )
    parser.add_argument("--max-connections", type=int, help="per server (Postyard's default 4)")
    parser.add_argument("--batch-size", type=int, help="worker batch (Postyard's default)")
    parser.add_argument(
        "--serve-workers",
        type=int,
        default=0,
        help="postyard serve --workers N: delivery in N processes of their own (0)",
    )
    parser.add_argument("--source-sessions", type=int, default=10, help="smtp-source -s (10)")
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of serve to FILE")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after (s)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSONL to append")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    parser.add_argument("--note", help="free text stored with the result")
    args = parser.parse_args(argv)
    if min(args.people, args.naive_messages, args.size) <= 0:
        parser.error("--people, --naive-messages and --size must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def checked_run() -> Iterator[dict[str, Any]]:
        check_tools(need_source=True)
        yield run(args)

    return run_main(
        "throughput.py",
        checked_run,
        lambda record: print(summary(record)),
        args.results,
        not args.no_record,
    )


if __name__ == "__main__":
    sys.exit(main())
