"""Event-to-inbox latency: time from an event's HTTP response to the SMTP server accepting the
message an event-triggered campaign sends for it, against a real `postyard serve`.

Run from the repository root::

    .venv/bin/python bench/latency.py [--rate 50] [--seconds 20] [--poll-seconds 1 0.05]

What it does, for each ``--poll-seconds`` value (one ``postyard serve`` and one record each):

* Starts an SMTP server in this process: aiosmtpd with a small handler that records
  ``time.perf_counter()`` when it accepts a message's DATA, keyed by the event's sequence
  number, read from the subject. The server and the HTTP client share this process's clock,
  so no clock synchronisation enters the figure.
* Creates a fresh SQLite database (``--database-url`` as in ``bench/delivery.py``), a workspace
  with ``postyard workspace create --json``, and starts ``postyard serve`` on a free port with
  ``POSTYARD_WORKER_POLL_SECONDS`` set to the value measured.
* Through the API: the SMTP server (``security: none``), ``--people`` people with an address,
  and an active event-triggered campaign on ``ordered`` whose subject is
  ``Order {{ event.seq }} for {{ customer.first_name }}``.
* Sends ``ordered`` events (``POST /v1/people/{id}/events``, data ``{"seq": n}``) open-loop at
  ``--rate`` per second for ``--seconds``: each is sent at its scheduled time whatever the
  previous ones are doing, so a slow answer does not lower the rate offered.
* Latency of an event = SMTP acceptance - HTTP response received. Reports p50, p95, p99 and
  max, and the HTTP response times themselves; waits up to ``--drain-timeout`` for the last
  messages.
* Appends one JSON line per poll value to ``bench/results/latency.jsonl``.

Exit status: 0 when every event's message arrived exactly once, 1 otherwise, 2 when set-up
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from common import (
    LOCALHOST,
    RESULTS_DIR,
    BenchError,
    Serve,
    bench_database,
    free_port,
    percentiles,
    postyard_serve,
    process_cpu_seconds,
    provenance,
    run_main,
    serve_environment,
    source_digest,
    table,
)
from delivery import FIRST_NAMES

DEFAULT_RESULTS = RESULTS_DIR / "latency.jsonl"
SUBJECT = re.compile(rb"^Subject: Order (\d+) for ", re.MULTILINE)


class ArrivalClock:
    """aiosmtpd handler: accepts every message and notes when, by the sequence number in its
    subject. Runs on the controller's thread; the dict is only read after sending stops."""

    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}
        self.duplicates = 0
        self.unmatched = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        accepted = time.perf_counter()
        match = SUBJECT.search(bytes(envelope.original_content or b""))
        with self.lock:
            if match is None:
                self.unmatched += 1
            elif int(match.group(1)) in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[int(match.group(1))] = accepted
        return "250 OK"

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)


def set_up(serve: Serve, smtp_port: int, people: int) -> None:
    """The SMTP server, the people and the active campaign, through the API."""
    with httpx.Client(base_url=serve.base_url, headers=serve.headers, timeout=60) as client:
        steps = [
            (
                "/v1/smtp_servers",
                {"name": "bench", "host": LOCALHOST, "port": smtp_port, "security": "none"},
            ),
            (
                "/v1/batch",
                {
                    "batch": [
                        {
                            "type": "identify",
                            "person_id": f"p-{index}",
                            "attributes": {
                                "email": f"customer.{index}@customers.example",
                                "first_name": FIRST_NAMES[index % len(FIRST_NAMES)],
                            },
                        }
                        for index in range(people)
                    ]
                },
            ),
            (
                "/v1/campaigns",
                {
                    "name": "Order confirmation",
                    "type": "event_triggered",
                    "trigger": {"event_name": "ordered"},
                    "state": "active",
                    "message": {
                        "from": "Acme <orders@acme.example>",
                        "subject": "Order {{ event.seq }} for {{ customer.first_name }}",
                        "text": (
                            "Hi {{ customer.first_name }},\n\nwe have your order "
                            "{{ event.seq }} and will ship it today.\n\nAcme\n"
                        ),
                    },
                },
            ),
        ]
        for path, body in steps:
            response = client.post(path, json=body)
            if response.status_code >= 300:
                raise BenchError(f"POST {path}: {response.status_code} {response.text[:500]}")


async def send_events(
    serve: Serve, rate: float, seconds: float, people: int
) -> tuple[dict[int, float], list[float], list[str]]:
    """Open loop: event n is sent at start + n / rate. Returns when each answer arrived, the
    HTTP response times (s), and the errors."""
    count = round(rate * seconds)
    responded: dict[int, float] = {}
    response_times: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=serve.base_url, headers=serve.headers, limits=limits, timeout=60
    ) as client:

        async def one(seq: int) -> None:
            sent = time.perf_counter()
            try:
                response = await client.post(
                    f"/v1/people/p-{seq % people}/events",
                    json={"name": "ordered", "data": {"seq": seq}},
                )
            except httpx.HTTPError as error:
                errors.append(f"event {seq}: {error!r}")
                return
            done = time.perf_counter()
            if response.status_code != 201:
                errors.append(f"event {seq}: {response.status_code} {response.text[:200]}")
                return
            responded[seq] = done
            response_times.append(done - sent)

        start = time.perf_counter() + 0.1
        tasks = []
        for seq in range(count):
            delay = start + seq / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(seq)))
        await asyncio.gather(*tasks)
    return responded, response_times, errors


def wait_arrivals(clock: ArrivalClock, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while clock.count() < expected and time.monotonic() < deadline:
        time.sleep(0.05)


def run_once(args: argparse.Namespace, poll_seconds: float, digest: str) -> dict[str, Any]:
    clock = ArrivalClock()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="postyard-bench-")))
        smtp = Controller(
            clock,
            hostname=LOCALHOST,
            port=free_port(),
            server_hostname="bench.localsmtp.invalid",
            decode_data=False,
        )
        smtp.start()
        stack.callback(smtp.stop)
        db = stack.enter_context(bench_database(args.database_url, workdir))
        env = serve_environment(db.url, workdir, worker_poll_seconds=f"{poll_seconds:g}")
        serve = stack.enter_context(postyard_serve(env, workdir))
        set_up(serve, smtp.port, args.people)
        time.sleep(max(poll_seconds, 0.2) * 2)  # the worker settles into its idle polling
        load_before = os.getloadavg()[0]
        cpu_before = process_cpu_seconds(serve.process.pid)
        started = time.perf_counter()
        responded, response_times, errors = asyncio.run(
            send_events(serve, args.rate, args.seconds, args.people)
        )
        sending_seconds = time.perf_counter() - started
        wait_arrivals(clock, len(responded), args.drain_timeout)
        server_cpu = process_cpu_seconds(serve.process.pid) - cpu_before
        exit_status = serve.stop()
    with clock.lock:
        arrivals = dict(clock.arrivals)
    latencies = [arrivals[seq] - done for seq, done in responded.items() if seq in arrivals]
    missing = sorted(set(responded) - set(arrivals))
    problems = errors[:5]
    if missing:
        problems.append(f"{len(missing)} message(s) never arrived (first: {missing[:5]})")
    if clock.duplicates or clock.unmatched:
        problems.append(f"{clock.duplicates} duplicate(s), {clock.unmatched} unmatched")
    if exit_status not in (0, None):
        problems.append(f"postyard serve exited with {exit_status}")
    expected = round(args.rate * args.seconds)
    return {
        **provenance("latency", digest, load_before, ("sqlalchemy", "aiosmtplib", "uvicorn")),
        "database": {"backend": db.backend, "version": db.version},
        "poll_seconds": poll_seconds,
        "rate_offered": args.rate,
        "events": expected,
        "events_ok": len(responded),
        "rate_achieved": round(expected / sending_seconds, 1),
        "people": args.people,
        "received": len(arrivals),
        "latency_ms": {k: round(v * 1000, 1) for k, v in percentiles(latencies).items()},
        "latency_mean_ms": round(sum(latencies) / len(latencies) * 1000, 1) if latencies else None,
        "http_ms": {k: round(v * 1000, 1) for k, v in percentiles(response_times).items()},
        "server_cpu_seconds": round(server_cpu, 3),
        "server_cpu_share": round(server_cpu / sending_seconds, 2),
        "problems": problems,
        "ok": not problems,
        "note": args.note,
    }


def summary(r: dict[str, Any]) -> str:
    lat, http = r["latency_ms"], r["http_ms"]

    def spread(values: dict[str, float]) -> str:
        return "  ".join(f"{name} {values[name]:,.0f}" for name in ("p50", "p95", "p99", "max"))

    return table(
        f"Postyard event-to-SMTP latency, POSTYARD_WORKER_POLL_SECONDS={r['poll_seconds']:g}",
        [
            ("database", f"{r['database']['backend']} {r['database']['version']}"),
            (
                "events",
                f"{r['events_ok']:,} of {r['events']:,} at {r['rate_offered']:g}/s offered "
                f"({r['rate_achieved']:g}/s achieved), {r['people']} people",
            ),
            ("received", f"{r['received']:,}"),
            ("latency (ms)", spread(lat) if lat else "-"),
            ("HTTP response (ms)", spread(http) if http else "-"),
            ("server CPU", f"{r['server_cpu_share']:.0%} of one CPU while sending"),
            (
                "load before",
                f"{r['machine']['load_before']:.2f} on {r['machine']['cpu_count']} CPUs",
            ),
            ("verdict", "OK" if r["ok"] else "FAILED: " + "; ".join(r["problems"])),
        ],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50, help="events per second (50)")
    parser.add_argument("--seconds", type=float, default=20, help="sending time (20)")
    parser.add_argument("--people", type=int, default=100, help="people the events cycle over")
    parser.add_argument(
        "--poll-seconds",
        type=float,
        nargs="+",
        default=[1.0, 0.05],
        help="POSTYARD_WORKER_POLL_SECONDS values, one run each (1 0.05)",
    )
    parser.add_argument("--drain-timeout", type=float, default=60, help="wait for arrivals (s)")
    parser.add_argument(
        "--database-url",
        help="SQLite URL of a new file, or a PostgreSQL server URL on which a throw-away "
        "database is created and dropped (default: SQLite in a temporary directory)",
    )
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSONL to append")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    parser.add_argument("--note", help="free text stored with the result")
    args = parser.parse_args(argv)
    if min(args.rate, args.seconds, args.people, *args.poll_seconds) <= 0:
        parser.error("--rate, --seconds, --people and --poll-seconds must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    digest = source_digest()
    return run_main(
        "latency.py",
        lambda: (run_once(args, poll, digest) for poll in args.poll_seconds),
        lambda record: print(summary(record)),
        args.results,
        not args.no_record,
    )


if __name__ == "__main__":
    sys.exit(main())
