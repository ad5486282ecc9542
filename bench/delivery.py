"""Delivery throughput: how fast the worker empties a full outbox into real SMTP servers.

Run from the repository root::

    .venv/bin/python bench/delivery.py [--messages 20000] [--size 2000] [--servers 2]
        [--database-url URL] [--workers 1] [--naive] [--profile FILE]

(`--help` lists the rest; bench/README.md explains how to read the figures.)

What it does, and why each step is there:

* Starts one Postfix ``smtp-sink`` per SMTP server on a free 127.0.0.1 port. smtp-sink is a
  C server that accepts and discards mail at tens of thousands of messages per second, so the
  figure measures Postyard, not the receiving side; its ``-c`` counters let the benchmark check
  that every message really arrived where the routing rules say it should.
* Creates a fresh database (SQLite in a temporary directory, or a throw-away database on the
  PostgreSQL server named by ``--database-url``), migrates it, and sets up a premium workspace
  whose servers split the traffic by campaign type (server 1 ``all_emails``, server 2
  ``newsletters``, ...), so routing at send time (R5/R6) is on the measured path.
* Queues N personalised messages through a bulk path built from the outbox's ``Letter``;
  queueing is timed separately because it is not what this benchmark measures.
* Times ``Worker.drain()`` until the outbox is empty (in this process, or in ``--workers``
  processes sharing the outbox), records the CPU time it took, which stays meaningful when
  other jobs share the machine, and checks from the database that every delivery ended
  ``sent`` on the expected server.
* In the same run, times ``smtp-source`` (Postfix's C load generator) against the same sink:
  the ceiling that the machine and the sink allow, which turns the Postyard figure into a
  percentage that stays comparable across machines. ``--naive`` adds a plain ``smtplib`` loop,
  the floor any Python sender should beat.
* Appends one JSON line to ``bench/results/delivery.jsonl`` and prints a summary.

Exit status: 0 when every message was delivered and counted, 1 when something was not,
2 when a required tool or argument is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import multiprocessing
import os
import queue
import random
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import uvloop
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from common import (
    LOCALHOST,
    RESULTS_DIR,
    BenchError,
    Sink,
    bench_database,
    check_tools,
    cpu_seconds,
    peak_rss_mb,
    provenance,
    run_main,
    run_naive,
    run_smtp_source,
    source_digest,
    start_sink,
    table,
)
from postyard.clock import utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.migrate import upgrade
from postyard.db.models import ApiKey, Delivery, DeliveryContent
from postyard.delivery.message import build_message
from postyard.delivery.outbox import Claimed, Letter, enqueue, enqueue_many
from postyard.delivery.policy import Status
from postyard.delivery.worker import Worker
from postyard.routing import SERVING_ROLE, CampaignType, Plan, Role
from postyard.secretbox import secret_box
from postyard.services.runtime import Runtime
from postyard.services.smtp_servers import Security, ServerFields, create_server
from postyard.services.workspaces import Caller, create_workspace

DEFAULT_RESULTS = RESULTS_DIR / "delivery.jsonl"

# The campaign types in the order servers 2, 3, ... take them; server 1 (all_emails) carries
# the first type no specific server serves, so with two servers the mix is half newsletters
# (server 2) and half segment-triggered mail (server 1, as the fallback).
MIX_ORDER = (
    CampaignType.NEWSLETTER,
    CampaignType.SEGMENT_TRIGGERED,
    CampaignType.EVENT_TRIGGERED,
    CampaignType.TRIGGERED_BROADCAST,
)
MAX_SERVERS = len(MIX_ORDER) + 1
INSERT_CHUNK = 1000


# --------------------------------------------------------------------------- database


# --------------------------------------------------------------------------- workload


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Which role each server holds and which campaign types the queued messages cycle over."""

    roles: tuple[Role, ...]
    mix: tuple[CampaignType, ...]

    def expected_server(self, campaign_type: CampaignType) -> int:
        """Index (0-based) of the server that must carry this type: R5, written out by hand
        so that the check does not trust the routing code it is checking."""
        for index, role in enumerate(self.roles):
            if role == SERVING_ROLE[campaign_type]:
                return index
        return 0


def traffic_for(servers: int) -> Traffic:
    specific = MIX_ORDER[: servers - 1]
    roles = (Role.ALL_EMAILS, *(SERVING_ROLE[t] for t in specific))
    mix = MIX_ORDER[: max(2, servers)]
    return Traffic(roles, mix)


FIRST_NAMES = (
    "Ada", "Alan", "Barbara", "Claude", "Dennis", "Edsger", "Frances", "Grace", "Guido", "Hedy",
    "John", "Joan", "Ken", "Linus", "Margaret", "Niklaus", "Radia", "Shafi", "Sophie", "Tim",
    "Vint", "Whitfield", "Yukihiro", "Zhores",
)  # fmt: skip
LAST_NAMES = (
    "Lovelace", "Turing", "Liskov", "Shannon", "Ritchie", "Dijkstra", "Allen", "Hopper",
    "Rossum", "Lamarr", "Backus", "Clarke", "Thompson", "Torvalds", "Hamilton", "Wirth",
    "Perlman", "Goldwasser", "Wilson", "Berners-Lee", "Cerf", "Diffie", "Matsumoto", "Alferov",
)  # fmt: skip
SENTENCES = (
    "We have been busy this month, and a few of the changes are worth a minute of your time.",
    "The new dashboard shows the state of every order at a glance, with filters that stick.",
    "Exports now include the delivery address and the tracking number of each shipment.",
    "If you work in a team, you can now invite colleagues and give each a role of their own.",
    "Our support team answers within four working hours, in English, French and German.",
    "Several of you asked for a dark theme; it is in the settings, under Appearance.",
    "Scheduled reports arrive on the first working day of the month, before nine o'clock.",
    "The mobile app has been rebuilt from the ground up and starts twice as fast as before.",
    "You can pause your subscription for up to three months without losing your history.",
    "We will be at the regional trade fair next week; come and say hello at stand B14.",
    "Invoices can be paid by bank transfer, card, or direct debit from a European account.",
    "A short survey follows below: it takes two minutes and shapes what we build next.",
)


class Letters:
    """N personalised messages of about `size` bytes of body each, reproducible from a seed.

    The body is a shared block of ordinary prose wrapped at 72 columns, framed by a
    greeting, an order line and a footer with a per-recipient link: enough personalisation
    that no two messages are equal. The link line is 81 characters, as tracking links
    usually are longer than 78, so the email package sends the body quoted-printable, as it
    would real mail of this kind.
    """

    def __init__(self, count: int, size: int, traffic: Traffic, seed: int = 2024) -> None:
        self.count = count
        self.size = size
        self.traffic = traffic
        self.seed = seed
        rng = random.Random(seed)
        frame = len(self._frame(0, "Margaret", "Berners-Lee", "x" * 32, "", rng))
        paragraphs: list[str] = []
        length = 0
        while length < max(size - frame, 0):
            paragraph = textwrap.fill(" ".join(rng.sample(SENTENCES, 4)), width=72)
            paragraphs.append(paragraph)
            length += len(paragraph) + 2
        self.prose = "\n\n".join(paragraphs)[: max(size - frame, 0)].rstrip()

    def __iter__(self) -> Iterator[Letter]:
        rng = random.Random(self.seed)
        for index in range(self.count):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            token = f"{rng.getrandbits(128):032x}"
            campaign_type = self.traffic.mix[index % len(self.traffic.mix)]
            newsletter = campaign_type == CampaignType.NEWSLETTER
            yield Letter(
                campaign_type=campaign_type.value,
                to_address=f"{first.lower()}.{last.lower()}.{index}@customers.example",
                from_address=(
                    "Acme News <news@acme.example>" if newsletter else "Acme <hello@acme.example>"
                ),
                subject=(
                    f"{first}, what is new at Acme this month"
                    if newsletter
                    else f"{first}, your order A-{100000 + index} is on its way"
                ),
                text_body=self._frame(index, first, last, token, self.prose, rng),
                person_id=f"person-{index}",
            )

    @staticmethod
    def _frame(
        index: int, first: str, last: str, token: str, prose: str, rng: random.Random
    ) -> str:
        return (
            f"Hi {first} {last},\n\n"
            f"Thank you for order A-{100000 + index}, placed on day {rng.randint(1, 28)} "
            f"of this month.\n\n{prose}\n\n"
            f"Manage your preferences: https://acme.example/u/{token}\n"
            "Acme Ltd, 1 Example Street, Exampletown\n"
        )


def queue_letters(
    database: Database, workspace_id: int, letters: Letters, settings: Settings, mode: str
) -> None:
    """Fill the outbox: `bulk` queues chunks of letters with `outbox.enqueue_many` (one
    statement per table and chunk), `enqueue` calls `outbox.enqueue` for each message
    (slower: one suppression lookup and one flush per message)."""
    now = utcnow()
    lifetime = timedelta(seconds=settings.message_lifetime_seconds)
    with database.session() as session:
        if mode == "enqueue":
            for letter in letters:
                enqueue(session, workspace_id, letter, now, lifetime)
            return
        chunk: list[Letter] = []
        for letter in letters:
            chunk.append(letter)
            if len(chunk) == INSERT_CHUNK:
                enqueue_many(session, workspace_id, chunk, now, lifetime)
                chunk = []
        enqueue_many(session, workspace_id, chunk, now, lifetime)


def set_up_workspace(
    database: Database,
    settings: Settings,
    traffic: Traffic,
    sinks: Sequence[Sink],
    max_connections: int,
) -> tuple[int, list[int]]:
    """A premium workspace with one server per sink, created through the service layer so the
    routing rules (R1-R4) accept the configuration exactly as the API would."""
    with database.session() as session:
        created = create_workspace(session, "Postyard bench", Plan.PREMIUM)
        key_id = session.scalar(
            select(ApiKey.id).where(ApiKey.workspace_id == created.workspace_id)
        )
        caller = Caller(created.workspace_id, Plan.PREMIUM, key_id or 0)
        runtime = Runtime(settings, secret_box(settings))
        server_ids = []
        for index, (role, sink) in enumerate(zip(traffic.roles, sinks, strict=True), start=1):
            server = create_server(
                session,
                caller,
                ServerFields(
                    name=f"sink-{index}",
                    host=LOCALHOST,
                    port=sink.port,
                    security=Security.NONE,
                    role=role,
                    max_connections=max_connections,
                ),
                runtime,
            )
            server_ids.append(server.id)
    return created.workspace_id, server_ids


# --------------------------------------------------------------------------- measuring


@dataclasses.dataclass(frozen=True)
class Drain:
    """What one timed drain cost: wall-clock, CPU of the worker process(es), peak memory."""

    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    error: str | None


def drain_here(
    database: Database, settings: Settings, timeout: float, profile: Path | None
) -> Drain:
    """One worker in this process, as `postyard worker` runs it.

    A drain that times out returns its error text instead of raising, so the deliveries are
    still counted and the run is recorded as failed rather than lost.
    """
    worker = Worker(database, settings)
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    error = None
    try:
        if profile is None:
            uvloop.run(worker.drain(timeout=timeout))  # the loop `postyard worker` runs
        else:
            _profiled_drain(worker, timeout, profile)
    except TimeoutError as timeout_error:
        error = str(timeout_error)
    seconds = time.perf_counter() - started
    return Drain(seconds, cpu_seconds() - cpu_before, peak_rss_mb(), error)


def drain_in_processes(settings: Settings, workers: int, timeout: float) -> Drain:
    """`workers` worker processes on one outbox, as DESIGN §6 scales out.

    Each process imports, connects and builds its Worker before a barrier, so the clock
    starts when all of them can claim, not while Python starts up (about a second each).
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers + 1)
    results = context.Queue()
    processes = [
        context.Process(
            target=_worker_process, args=(settings, timeout, barrier, results), daemon=True
        )
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        barrier.wait(timeout=120)
    except threading.BrokenBarrierError:
        raise BenchError("worker processes did not start within 120 s") from None
    started = time.perf_counter()
    for process in processes:
        process.join(timeout + 120)
    seconds = time.perf_counter() - started
    reports = []
    while len(reports) < workers:
        try:
            reports.append(results.get(timeout=5))
        except queue.Empty:
            break
    errors = [error for error, _, _ in reports if error]
    if len(reports) < workers:
        errors.append(f"{workers - len(reports)} worker process(es) died without a report")
    return Drain(
        seconds,
        sum(cpu for _, cpu, _ in reports),
        max((rss for _, _, rss in reports), default=0.0),
        "; ".join(errors) or None,
    )


def _worker_process(
    settings: Settings, timeout: float, barrier: Any, results: multiprocessing.Queue
) -> None:
    logging.getLogger("postyard").setLevel(logging.WARNING)
    database = Database(settings.database_url)
    worker = Worker(database, settings)
    barrier.wait()
    cpu_before = cpu_seconds()
    error = None
    try:
        uvloop.run(worker.drain(timeout=timeout))
    except TimeoutError as timeout_error:
        error = str(timeout_error)
    finally:
        database.dispose()
    results.put((error, cpu_seconds() - cpu_before, peak_rss_mb()))


def _profiled_drain(worker: Worker, timeout: float, path: Path) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise BenchError(
            "--profile needs pyinstrument: .venv/bin/pip install pyinstrument"
        ) from None

    async def inline(function: Any, /, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    # 1 ms keeps the profiler's own cost (it hooks every call) from swamping call-heavy code.
    profiler = Profiler(interval=0.001, async_mode="disabled")
    with mock.patch("asyncio.to_thread", inline):
        profiler.start()
        try:
            asyncio.run(worker.drain(timeout=timeout))
        finally:
            profiler.stop()
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = profiler.output_text(time="percent_of_total")
    flat = profiler.output_text(time="percent_of_total", flat=True)
    path.write_text(f"{tree}\nFunctions by own time:\n{flat}")


def outcome_counts(database: Database) -> tuple[dict[str, int], dict[int, int], list[dict]]:
    """Statuses of all deliveries, sent messages per server, and a sample of the unsent."""
    with database.session() as session:
        statuses = dict(
            session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
        )
        per_server = dict(
            session.execute(
                select(Delivery.smtp_server_id, func.count())
                .where(Delivery.status == Status.SENT)
                .group_by(Delivery.smtp_server_id)
            ).all()
        )
        unsent = [
            {"id": row.id, "status": row.status, "attempts": row.attempts, "error": row.last_error}
            for row in session.execute(
                select(Delivery.id, Delivery.status, Delivery.attempts, Delivery.last_error)
                .where(Delivery.status != Status.SENT)
                .order_by(Delivery.id)
                .limit(10)
            )
        ]
    return statuses, per_server, unsent


def wire_bytes(database: Database, sample: int = 50) -> int:
    """Average size of a message as the worker puts it on the wire (headers included), to
    compare with smtp-source, whose -l counts the body only."""
    columns = [
        getattr(Delivery, name, None) or getattr(DeliveryContent, name) for name in Claimed._fields
    ]
    with database.session() as session:
        rows = session.execute(
            select(*columns)
            .join(DeliveryContent, DeliveryContent.delivery_id == Delivery.id)
            .order_by(Delivery.id)
            .limit(sample)
        ).all()
    sizes = [len(build_message(Claimed(*row), utcnow())) for row in rows]
    return round(sum(sizes) / len(sizes)) if sizes else 0


# --------------------------------------------------------------------------- reporting


def summary(record: dict[str, Any]) -> str:
    """The record as a two-column table, wall-clock figures first, then the checks."""
    r = record
    machine, database = r["machine"], r["database"]
    rows: list[tuple[str, str]] = [
        ("database", f"{database['backend']} {database['version']}"),
        ("messages", f"{r['messages']:,}"),
        ("body size", f"{r['size']:,} B (on the wire ~{r['wire_bytes']:,} B)"),
        ("servers", f"{r['servers']} x max_connections {r['max_connections']}"),
        ("workers x batch size", f"{r['workers']} x {r['batch_size']}"),
        ("queue time", f"{r['queue_seconds']:.2f} s ({r['queue_mode']})"),
        ("delivery time", f"{r['delivery_seconds']:.2f} s"),
        ("Postyard", f"{r['msgs_per_s']:,.0f} msg/s"),
        ("CPU per message", f"{r['cpu_us_per_msg']:,.0f} us ({r['delivery_cpu_seconds']:.2f} s)"),
        ("peak RSS", f"{r['peak_rss_mb']:.0f} MB ({r['rss_after_queue_mb']:.0f} MB before)"),
        ("load before", f"{machine['load_before']:.2f} on {machine['cpu_count']} CPUs"),
    ]
    source = r.get("smtp_source")
    if source:
        rows.append(
            ("smtp-source", f"{source['msgs_per_s']:,.0f} msg/s ({source['seconds']:.2f} s)")
        )
        rows.append(("Postyard / smtp-source", f"{r['ratio_percent']:.1f} %"))
    naive = r.get("naive")
    if naive:
        rows.append(
            ("naive smtplib", f"{naive['msgs_per_s']:,.0f} msg/s ({naive['seconds']:.2f} s)")
        )
        rows.append(("Postyard / naive", f"{r['naive_ratio_percent']:.1f} %"))
    rows += [
        ("statuses", ", ".join(f"{k} {v:,}" for k, v in sorted(r["statuses"].items()))),
        ("per server (sent)", ", ".join(f"{v:,}" for v in r["sent_per_server"])),
        ("per sink (received)", ", ".join(f"{v:,}" for v in r["sink_received"])),
        ("verdict", "OK" if r["ok"] else "FAILED: " + "; ".join(r["problems"])),
    ]
    return table("Postyard delivery benchmark", rows)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Settings()
    server_defaults = {f.name: f.default for f in dataclasses.fields(ServerFields)}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages to send (20000)")
    parser.add_argument("--size", type=int, default=2000, help="body bytes per message (2000)")
    parser.add_argument(
        "--servers",
        type=int,
        default=2,
        choices=range(1, MAX_SERVERS + 1),
        help="SMTP servers, each with its own smtp-sink (2)",
    )
    parser.add_argument(
        "--database-url",
        help="SQLite URL of a new file, or a PostgreSQL server URL on which a throw-away "
        "database is created and dropped (default: SQLite in a temporary directory)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=server_defaults["max_connections"],
        help="max_connections of each SMTP server (Postyard's default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.worker_batch_size,
        help="worker batch size (Postyard's default: %(default)s)",
    )
    parser.add_argument(
        "--queue",
        choices=("bulk", "enqueue"),
        default="bulk",
        help="bulk insert (default) or outbox.enqueue per message",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes draining the outbox together (1: one worker in this process)",
    )
    parser.add_argument("--source-sessions", type=int, default=10, help="smtp-source -s (10)")
    parser.add_argument("--naive", action="store_true", help="also time a plain smtplib loop")
    parser.add_argument("--no-smtp-source", action="store_true", help="skip the smtp-source run")
    parser.add_argument("--timeout", type=float, default=900, help="give up draining after (s)")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile of the drain")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSONL to append")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    parser.add_argument("--note", help="free text stored with the result")
    args = parser.parse_args(argv)
    numbers = (args.messages, args.size, args.max_connections, args.batch_size, args.workers)
    if min(numbers) <= 0:
        parser.error("--messages, --size, --max-connections, --batch-size, --workers must be > 0")
    if args.profile and args.workers != 1:
        parser.error("--profile samples this process: use it with --workers 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    digest = source_digest()  # now, before others' edits during the run could change it
    traffic = traffic_for(args.servers)
    letters = Letters(args.messages, args.size, traffic)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="postyard-bench-")))
        sinks = [start_sink(workdir, index, stack) for index in range(1, args.servers + 1)]
        db = stack.enter_context(bench_database(args.database_url, workdir))
        settings = Settings(
            database_url=db.url,
            secret_key=Fernet.generate_key().decode(),
            secret_key_file=workdir / "postyard.key",
            worker_batch_size=args.batch_size,
        )
        upgrade(db.url)
        database = Database(db.url)
        stack.callback(database.dispose)
        workspace_id, server_ids = set_up_workspace(
            database, settings, traffic, sinks, args.max_connections
        )
        started = time.perf_counter()
        queue_letters(database, workspace_id, letters, settings, args.queue)
        queue_seconds = time.perf_counter() - started
        rss_after_queue = peak_rss_mb()

        load_before = os.getloadavg()[0]
        if args.workers == 1:
            drain = drain_here(database, settings, args.timeout, args.profile)
        else:
            drain = drain_in_processes(settings, args.workers, args.timeout)
        time.sleep(0.05)
        sink_received = [sink.delivered() for sink in sinks]

        statuses, per_server, unsent = outcome_counts(database)
        expected = Counter(
            traffic.expected_server(traffic.mix[i % len(traffic.mix)]) for i in range(args.messages)
        )
        expected_per_server = [expected.get(index, 0) for index in range(len(sinks))]
        sent_per_server = [per_server.get(server_id, 0) for server_id in server_ids]
        problems = []
        if drain.error:
            problems.append(drain.error)
        if statuses.get(Status.SENT, 0) != args.messages:
            problems.append(f"{args.messages - statuses.get(Status.SENT, 0)} not sent")
        if sent_per_server != expected_per_server:
            problems.append(f"sent per server {sent_per_server} != expected {expected_per_server}")
        if sink_received != expected_per_server:
            problems.append(f"sinks received {sink_received} != expected {expected_per_server}")

        record: dict[str, Any] = {
            **provenance("delivery", digest, load_before),
            "database": {"backend": db.backend, "version": db.version},
            "messages": args.messages,
            "size": args.size,
            "wire_bytes": wire_bytes(database),
            "servers": args.servers,
            "roles": [role.value for role in traffic.roles],
            "mix": [t.value for t in traffic.mix],
            "max_connections": args.max_connections,
            "batch_size": args.batch_size,
            "queue_mode": args.queue,
            "queue_seconds": round(queue_seconds, 4),
            "queue_msgs_per_s": round(args.messages / queue_seconds, 1),
            "workers": args.workers,
            "delivery_seconds": round(drain.seconds, 4),
            "msgs_per_s": round(args.messages / drain.seconds, 1),
            "delivery_cpu_seconds": round(drain.cpu_seconds, 3),
            "cpu_us_per_msg": round(drain.cpu_seconds / args.messages * 1e6, 1),
            "peak_rss_mb": round(drain.peak_rss_mb, 1),
            "rss_after_queue_mb": round(rss_after_queue, 1),
            "statuses": statuses,
            "sent_per_server": sent_per_server,
            "sink_received": sink_received,
            "unsent_sample": unsent,
            "profiled": args.profile is not None,
            "note": args.note,
        }
        if not args.no_smtp_source:
            source = run_smtp_source(sinks[0], args.messages, args.size, args.source_sessions)
            record["smtp_source"] = source
            record["ratio_percent"] = round(100 * record["msgs_per_s"] / source["msgs_per_s"], 1)
            if source["exit_status"] != 0 or source["received"] != args.messages:
                problems.append(
                    f"smtp-source exit {source['exit_status']}, sink received {source['received']}"
                )
        if args.naive:
            naive = run_naive(sinks[0], letters)
            record["naive"] = naive
            record["naive_ratio_percent"] = round(
                100 * record["msgs_per_s"] / naive["msgs_per_s"], 1
            )
            if naive["received"] != args.messages:
                problems.append(f"naive loop: sink received {naive['received']}")
        record["problems"] = problems
        record["ok"] = not problems
    return record


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def checked_run() -> list[dict[str, Any]]:
        check_tools(need_source=not args.no_smtp_source)
        return [run(args)]

    def report(record: dict[str, Any]) -> None:
        print(summary(record))
        if record["unsent_sample"]:
            print("  first unsent deliveries:")
            for row in record["unsent_sample"]:
                print(f"    #{row['id']} {row['status']} after {row['attempts']}: {row['error']}")
        if args.profile:
            print(f"  profile: {args.profile}")

    return run_main("delivery.py", checked_run, report, args.results, not args.no_record)


if __name__ == "__main__":
    sys.exit(main())
