"""Chaos: long runs that break things under load and count what the SMTP server took.

Run from the repository root::

    .venv/bin/python bench/chaos.py [--scenarios kill,outage,lifetime,pg-restart]
        [--messages 20000] [--rounds 5] [--outage-seconds 60] [--database-url URL]

Every scenario runs real `postyard worker` processes against a Postfix `smtp-sink` that dumps
each message it takes (`-d`), so the figures are counted at the receiving end, per
Message-ID, against what was queued:

* ``kill``: `--messages` queued at once (a newsletter's worth); a worker is killed with
  SIGKILL `--rounds` times in the middle of the run and a new one started each time. Nothing
  may be lost; the duplicates may not exceed the rows the killed workers held in flight
  (`sending`: at most a batch each), which is printed per round.
* ``outage``: the SMTP server is down (nothing listening) for `--outage-seconds`, then up:
  every message deferred meanwhile is delivered, none failed.
* ``lifetime``: the server answers 450 for ever; every message ends `failed` with "lifetime
  exceeded ... last error: 450 ...", none silently.
* ``pg-restart`` (PostgreSQL only): `pg_ctlcluster VERSION NAME restart` under load
  (`--pg-cluster`, default the machine's `main` cluster): the workers reconnect and carry
  on, nothing lost. It restarts the whole PostgreSQL server: never run it where others
  are using that server.

Prints a table per scenario and appends one JSON line per scenario to
`bench/results/chaos.jsonl`. Exit status: 0 when every scenario kept its promises, 1 when one
did not, 2 when a tool or argument is missing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import select

from common import (
    REPO_DIR,
    RESULTS_DIR,
    BenchError,
    bench_database,
    free_port,
    provenance,
    run_main,
    source_digest,
    table,
)
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.migrate import upgrade
from postyard.db.models import ApiKey, Delivery
from postyard.routing import Plan
from postyard.secretbox import secret_box
from postyard.services.runtime import Runtime
from postyard.services.smtp_servers import Security, ServerFields, create_server
from postyard.services.workspaces import Caller, create_workspace

# The sink, the worker processes and the tallies are the fault tests' own helpers: the
# bench measures with the same instruments the tests assert with.
sys.path.insert(0, str(REPO_DIR / "tests" / "integration"))
from fault_helpers import (
    in_flight,
    message_ids,
    queue_many,
    start_worker,
    statuses,
    tally,
    worker_environment,
)
from smtp_sink import SmtpSink, start_smtp_sink

DEFAULT_RESULTS = RESULTS_DIR / "chaos.jsonl"
SINK_PATH = "/usr/sbin/smtp-sink"
SCENARIOS = ("kill", "outage", "lifetime", "pg-restart")
# Retries fast enough that a run takes minutes, not the hours the production defaults allow.
WORKER_SETTINGS = {
    "retry_base_seconds": 0.5,
    "retry_max_seconds": 5,
    "lease_seconds": 10,
    "worker_poll_seconds": 0.1,
}


class Run:
    """One scenario's set-up: a database, a workspace with one server, a sink, workers."""

    def __init__(self, args: argparse.Namespace, stack: ExitStack, name: str) -> None:
        self.args = args
        self.stack = stack
        self.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        self.db = stack.enter_context(bench_database(args.database_url, self.workdir))
        upgrade(self.db.url)
        self.database = Database(self.db.url)
        stack.callback(self.database.dispose)
        self.secret_key = Fernet.generate_key().decode()
        self.port = free_port()
        self.sinks: list[SmtpSink] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.name = name
        stack.callback(self._stop_all)
        self.workspace_id = self._workspace()

    def _workspace(self) -> int:
        settings = Settings(database_url=self.db.url, secret_key=self.secret_key)
        with self.database.session() as session:
            created = create_workspace(session, "Postyard chaos", Plan.PREMIUM)
            key_id = session.scalar(
                select(ApiKey.id).where(ApiKey.workspace_id == created.workspace_id)
            )
            caller = Caller(created.workspace_id, Plan.PREMIUM, key_id or 0)
            fields = ServerFields(
                name="sink",
                host="127.0.0.1",
                port=self.port,
                security=Security.NONE,
                max_connections=self.args.max_connections,
            )
            create_server(session, caller, fields, Runtime(settings, secret_box(settings)))
        return created.workspace_id

    def start_sink(self, *options: str) -> SmtpSink:
        dumps = self.workdir / f"sink-{len(self.sinks)}"
        sink = start_smtp_sink(SINK_PATH, dumps, *options, port=self.port)
        self.sinks.append(sink)
        return sink

    def start_worker(self) -> subprocess.Popen[bytes]:
        env = worker_environment(
            self.db.url,
            self.secret_key,
            worker_batch_size=self.args.batch_size,
            **WORKER_SETTINGS,
        )
        worker = start_worker(env, self.workdir / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def queue(self, count: int, lifetime: timedelta = timedelta(days=3)) -> set[str]:
        queue_many(self.database, self.workspace_id, count, lifetime=lifetime)
        return message_ids(self.database, self.workspace_id)

    def statuses(self) -> dict[str, int]:
        return dict(statuses(self.database, self.workspace_id))

    def received(self) -> int:
        return sum(sum(sink.message_ids().values()) for sink in self.sinks)

    def tally(self, queued: set[str]) -> dict[str, int]:
        counts = tally(queued, [sink.message_ids() for sink in self.sinks])
        return {
            "queued": counts.queued,
            "received": counts.received,
            "distinct": counts.distinct,
            "duplicates": counts.duplicates,
            "missing": counts.missing,
        }

    def wait(self, condition: Callable[[], bool], what: str, timeout: float | None = None) -> float:
        """Poll until `condition` holds; returns the seconds it took."""
        began = time.monotonic()
        deadline = began + (timeout or self.args.timeout)
        while not condition():
            for worker in self.workers:
                if worker.poll() not in (None, -signal.SIGKILL):
                    raise BenchError(f"{self.name}: a worker exited with {worker.returncode}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: {what} not reached; statuses {self.statuses()}")
            time.sleep(0.2)
        return time.monotonic() - began

    def all_done(self, total: int, status: str = "sent") -> Callable[[], bool]:
        return lambda: self.statuses().get(status, 0) == total

    def _stop_all(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(timeout=5)
        for sink in self.sinks:
            sink.stop()


def kill_scenario(run: Run) -> dict[str, Any]:
    """SIGKILL a worker `rounds` times in the middle of one big send, restarting it each time."""
    args = run.args
    run.start_sink()
    queued = run.queue(args.messages)
    rounds = []
    held: set[int] = set()  # rows some killed worker held in flight: the duplicates' bound
    step = args.messages // (args.rounds + 1)
    for number in range(1, args.rounds + 1):
        worker = run.start_worker()
        run.wait(lambda n=number: run.received() >= n * step, f"round {number}")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        in_flight_now = in_flight(run.database, run.workspace_id)
        held |= in_flight_now
        counts = run.tally(queued)
        rounds.append({"round": number, "in_flight_bound": len(in_flight_now), **counts})
    run.start_worker()
    seconds = run.wait(run.all_done(args.messages), "all sent")
    final = run.tally(queued)
    bound = len(held)
    problems = []
    if final["missing"]:
        problems.append(f"{final['missing']} message(s) never received")
    if final["duplicates"] > bound:
        problems.append(f"{final['duplicates']} duplicates exceed the in-flight bound {bound}")
    return {
        "rounds": rounds,
        **final,
        "in_flight_bound_total": bound,
        "statuses": run.statuses(),
        "last_worker_seconds": round(seconds, 1),
        "problems": problems,
    }


def outage_scenario(run: Run) -> dict[str, Any]:
    """Nothing listens for `outage_seconds`; then a healthy server comes up on the port."""
    args = run.args
    queued = run.queue(args.outage_messages)
    run.start_worker()
    time.sleep(args.outage_seconds)
    during = run.statuses()
    run.start_sink()
    seconds = run.wait(run.all_done(args.outage_messages), "all sent after the outage")
    final = run.tally(queued)
    problems = []
    if final["missing"] or run.statuses() != {"sent": args.outage_messages}:
        problems.append(f"not all sent: {run.statuses()}")
    if during.get("failed"):
        problems.append(f"{during['failed']} failed during the outage")
    return {
        "outage_seconds": args.outage_seconds,
        "statuses_during_outage": during,
        "seconds_to_deliver_after_up": round(seconds, 1),
        **final,
        "statuses": run.statuses(),
        "problems": problems,
    }


def lifetime_scenario(run: Run) -> dict[str, Any]:
    """A server that answers 450 for ever: every message fails when its lifetime runs out."""
    args = run.args
    run.start_sink("-r", "RCPT")
    run.queue(args.outage_messages, lifetime=timedelta(seconds=args.lifetime_seconds))
    run.start_worker()
    seconds = run.wait(run.all_done(args.outage_messages, "failed"), "all failed")
    with run.database.session() as session:
        errors = list(
            session.scalars(
                select(Delivery.last_error).where(Delivery.workspace_id == run.workspace_id)
            )
        )
    explained = sum(
        1 for error in errors if error and error.startswith("lifetime exceeded") and "450" in error
    )
    problems = [] if explained == len(errors) else [f"{len(errors) - explained} unexplained"]
    return {
        "lifetime_seconds": args.lifetime_seconds,
        "seconds_until_all_failed": round(seconds, 1),
        "failed_with_reason": explained,
        "statuses": run.statuses(),
        "problems": problems,
    }


def pg_restart_scenario(run: Run) -> dict[str, Any]:
    """Restart the PostgreSQL server while a worker is sending; it must carry on."""
    args = run.args
    if run.db.backend != "postgresql":
        raise BenchError("pg-restart needs --database-url postgresql+psycopg://...")
    run.start_sink()
    queued = run.queue(args.messages)
    worker = run.start_worker()
    run.wait(lambda: run.received() >= args.messages // 4, "a quarter sent")
    version, name = args.pg_cluster.split("/")
    began = time.monotonic()
    restart = subprocess.run(
        ["pg_ctlcluster", version, name, "restart"], capture_output=True, text=True, check=False
    )
    restart_seconds = time.monotonic() - began
    if restart.returncode != 0:
        raise BenchError(f"pg_ctlcluster failed: {restart.stderr.strip()}")
    received_at_restart = run.received()
    seconds = run.wait(run.all_done(args.messages), "all sent after the restart")
    final = run.tally(queued)
    problems = []
    if final["missing"]:
        problems.append(f"{final['missing']} message(s) never received")
    if worker.poll() is not None:
        problems.append(f"the worker exited with {worker.returncode}")
    if final["duplicates"] > args.batch_size:
        problems.append(f"{final['duplicates']} duplicates exceed a batch ({args.batch_size})")
    return {
        "pg_cluster": args.pg_cluster,
        "restart_seconds": round(restart_seconds, 1),
        "received_at_restart": received_at_restart,
        "seconds_to_finish_after_restart": round(seconds, 1),
        "worker_survived": worker.poll() is None,
        **final,
        "statuses": run.statuses(),
        "problems": problems,
    }


RUNNERS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "kill": kill_scenario,
    "outage": outage_scenario,
    "lifetime": lifetime_scenario,
    "pg-restart": pg_restart_scenario,
}


def records(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    if not Path(SINK_PATH).exists():
        raise BenchError(f"{SINK_PATH} not found: install Postfix (apt-get install postfix)")
    digest = source_digest()
    load_before = os.getloadavg()[0]
    for name in args.scenarios:
        with ExitStack() as stack:
            run = Run(args, stack, name)
            began = time.monotonic()
            result = RUNNERS[name](run)
            yield {
                **provenance("chaos", digest, load_before),
                "scenario": name,
                "database": run.db.backend,
                "database_version": run.db.version,
                "messages": args.messages,
                "batch_size": args.batch_size,
                "max_connections": args.max_connections,
                "seconds": round(time.monotonic() - began, 1),
                **result,
                "ok": not result["problems"],
            }


def report(record: dict[str, Any]) -> None:
    rows = [
        (key, str(value))
        for key, value in record.items()
        if key not in {"rounds", "machine", "versions", "commit", "source_digest", "benchmark"}
    ]
    print(table(f"chaos: {record['scenario']}", rows))
    if record.get("rounds"):
        print("  round  received  distinct  duplicates  in-flight bound")
        for r in record["rounds"]:
            print(
                f"  {r['round']:>5}  {r['received']:>8}  {r['distinct']:>8}  "
                f"{r['duplicates']:>10}  {r['in_flight_bound']:>15}"
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenarios",
        default="kill,outage,lifetime",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help=f"comma-separated, from {', '.join(SCENARIOS)} (kill,outage,lifetime)",
    )
    parser.add_argument("--messages", type=int, default=20000, help="kill, pg-restart (20000)")
    parser.add_argument("--rounds", type=int, default=5, help="SIGKILLs in the kill run (5)")
    parser.add_argument("--outage-seconds", type=float, default=60.0, help="outage length (60)")
    parser.add_argument(
        "--outage-messages", type=int, default=2000, help="messages in outage, lifetime (2000)"
    )
    parser.add_argument(
        "--lifetime-seconds", type=float, default=20.0, help="message lifetime in lifetime (20)"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="worker batch size (500)")
    parser.add_argument("--max-connections", type=int, default=4, help="per server (4)")
    parser.add_argument("--database-url", help="PostgreSQL server to use (default SQLite)")
    parser.add_argument(
        "--pg-cluster", default=_default_cluster(), help="VERSION/NAME for pg_ctlcluster"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="per wait, seconds (1800)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--no-record", action="store_true", help="print only, append nothing")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def _default_cluster() -> str:
    """The machine's newest `main` cluster, as Debian lays them out (/etc/postgresql/V/main)."""
    versions = sorted(
        (path.parent.name for path in Path("/etc/postgresql").glob("*/main")),
        key=lambda v: [int(part) for part in v.split(".") if part.isdigit()],
    )
    return f"{versions[-1]}/main" if versions else "15/main"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("chaos.py", lambda: records(args), report, args.results, not args.no_record)


if __name__ == "__main__":
    sys.exit(main())
