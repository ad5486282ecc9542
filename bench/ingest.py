"""Ingest throughput: identify and event calls per second against a real `postyard serve`,
through `/v1/batch` and through single calls.

Run from the repository root::

    .venv/bin/python bench/ingest.py [--batches 20] [--batch-size 1000] [--singles 3000]
        [--concurrency 8] [--database-url URL]

What it does:

* Creates a fresh database (SQLite in a temporary directory by default; ``--database-url`` as
  in ``bench/delivery.py``), a workspace with ``postyard workspace create --json``, and starts
  ``postyard serve`` on a free port with ``POSTYARD_DATABASE_URL`` and ``POSTYARD_SECRET_KEY``
  (its delivery worker and jobs run too, idle: the workspace has no campaigns).
* Four phases, each with ``--concurrency`` requests in flight from one httpx client:

  1. ``batch identify``: ``--batches`` requests to ``POST /v1/batch`` of ``--batch-size``
     identify operations, each creating a new person (email and three attributes);
  2. ``batch event``: as many event operations (``page_viewed`` with a little data) on
     those people;
  3. ``single identify``: ``--singles`` ``PUT /v1/people/{id}`` creating new people;
  4. ``single event``: ``--singles`` ``POST /v1/people/{id}/events`` on them.

  Each phase reports operations per second (wall clock, first request sent to last answer),
  requests per second, and the server's CPU time per operation (from /proc), which says how
  much of the wall clock the server process was busy.
* Checks every answer (2xx, and every batch result ``ok``), stops the server with SIGINT
  (uvicorn's clean shutdown), appends one JSON line to ``bench/results/ingest.jsonl``.

Exit status: 0 when every operation succeeded, 1 otherwise, 2 when set-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from common import (
    RESULTS_DIR,
    Serve,
    bench_database,
    postyard_serve,
    process_cpu_seconds,
    provenance,
    run_main,
    serve_environment,
    source_digest,
    table,
)
from delivery import FIRST_NAMES, LAST_NAMES

DEFAULT_RESULTS = RESULTS_DIR / "ingest.jsonl"
PATHS = ("/pricing", "/docs/api", "/blog/november", "/account/billing", "/features")

# A request: (method, path, JSON body, operations it carries).
Request = tuple[str, str, Any, int]


def identify_attributes(index: int) -> dict[str, Any]:
    first = FIRST_NAMES[index % len(FIRST_NAMES)]
    last = LAST_NAMES[index // len(FIRST_NAMES) % len(LAST_NAMES)]
    return {
        "email": f"{first.lower()}.{last.lower()}.{index}@customers.example",
        "first_name": first,
        "last_name": last,
        "plan": ("free", "pro", "team")[index % 3],
    }


def event_data(index: int) -> dict[str, Any]:
    return {"path": PATHS[index % len(PATHS)], "seq": index, "referrer": "newsletter"}


def batch_requests(kind: str, prefix: str, batches: int, size: int) -> list[Request]:
    requests: list[Request] = []
    for batch in range(batches):
        operations = []
        for index in range(batch * size, (batch + 1) * size):
            person_id = f"{prefix}-{index}"
            if kind == "identify":
                operations.append(
                    {
                        "type": "identify",
                        "person_id": person_id,
                        "attributes": identify_attributes(index),
                    }
                )
            else:
                operations.append(
                    {
                        "type": "event",
                        "person_id": person_id,
                        "name": "page_viewed",
                        "data": event_data(index),
                    }
                )
        requests.append(("POST", "/v1/batch", {"batch": operations}, size))
    return requests


def single_requests(kind: str, prefix: str, count: int) -> list[Request]:
    if kind == "identify":
        return [
            ("PUT", f"/v1/people/{prefix}-{index}", identify_attributes(index), 1)
            for index in range(count)
        ]
    return [
        (
            "POST",
            f"/v1/people/{prefix}-{index}/events",
            {"name": "page_viewed", "data": event_data(index)},
            1,
        )
        for index in range(count)
    ]


def batch_failures(response: httpx.Response) -> int:
    """Operations of a /v1/batch answer that were refused (all of them if the request was)."""
    if response.status_code != 200:
        return -1
    return sum(1 for result in response.json()["results"] if not result["ok"])


async def run_phase(
    serve: Serve, requests: Sequence[Request], concurrency: int, check: Callable | None
) -> dict[str, Any]:
    """Send the requests with `concurrency` in flight; time from the first to the last answer."""
    pending = list(reversed(requests))
    statuses: Counter[int] = Counter()
    failed_operations = 0
    first_error: str | None = None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=serve.base_url, headers=serve.headers, limits=limits, timeout=120
    ) as client:

        async def sender() -> None:
            nonlocal failed_operations, first_error
            while pending:
                method, path, body, operations = pending.pop()
                response = await client.request(method, path, json=body)
                statuses[response.status_code] += 1
                failed = check(response) if check else 0
                if failed == -1 or response.status_code >= 300:
                    failed = operations
                if failed and first_error is None:
                    first_error = f"{response.status_code} {response.text[:300]}"
                failed_operations += failed

        cpu_before = process_cpu_seconds(serve.process.pid)
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        server_cpu = process_cpu_seconds(serve.process.pid) - cpu_before
    operations = sum(request[3] for request in requests)
    return {
        "requests": len(requests),
        "operations": operations,
        "seconds": round(seconds, 3),
        "ops_per_s": round(operations / seconds, 1),
        "requests_per_s": round(len(requests) / seconds, 1),
        "server_cpu_seconds": round(server_cpu, 3),
        "server_cpu_us_per_op": round(server_cpu / operations * 1e6, 1),
        "server_cpu_share": round(server_cpu / seconds, 2),
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "failed_operations": failed_operations,
        "first_error": first_error,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    digest = source_digest()
    phases: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="postyard-bench-")))
        db = stack.enter_context(bench_database(args.database_url, workdir))
        env = serve_environment(db.url, workdir)
        serve = stack.enter_context(postyard_serve(env, workdir))
        load_before = os.getloadavg()[0]
        plan = [
            ("batch identify", batch_requests("identify", "b", args.batches, args.batch_size)),
            ("batch event", batch_requests("event", "b", args.batches, args.batch_size)),
            ("single identify", single_requests("identify", "s", args.singles)),
            ("single event", single_requests("event", "s", args.singles)),
        ]
        for name, requests in plan:
            check = batch_failures if name.startswith("batch") else None
            phases[name] = asyncio.run(run_phase(serve, requests, args.concurrency, check))
            print(f"  {name}: {phases[name]['ops_per_s']:,.0f} ops/s", flush=True)
        exit_status = serve.stop()
    problems = [
        f"{name}: {phase['failed_operations']} failed ({phase['first_error']})"
        for name, phase in phases.items()
        if phase["failed_operations"]
    ]
    if exit_status not in (0, None):
        problems.append(f"postyard serve exited with {exit_status}")
    return {
        **provenance("ingest", digest, load_before, ("sqlalchemy", "fastapi", "uvicorn", "httpx")),
        "database": {"backend": db.backend, "version": db.version},
        "batches": args.batches,
        "batch_size": args.batch_size,
        "singles": args.singles,
        "concurrency": args.concurrency,
        "phases": phases,
        "serve_exit_status": exit_status,
        "problems": problems,
        "ok": not problems,
        "note": args.note,
    }


def summary(r: dict[str, Any]) -> str:
    rows = [
        ("database", f"{r['database']['backend']} {r['database']['version']}"),
        ("in flight", f"{r['concurrency']} requests"),
    ]
    for name, phase in r["phases"].items():
        unit = f"{r['batch_size']:,} ops/request" if name.startswith("batch") else "1 op/request"
        rows.append(
            (
                name,
                f"{phase['ops_per_s']:>8,.0f} ops/s  ({phase['operations']:,} ops, {unit}, "
                f"{phase['seconds']:.1f} s; server CPU {phase['server_cpu_us_per_op']:,.0f} us/op, "
                f"busy {phase['server_cpu_share']:.0%})",
            )
        )
    load = r["machine"]["load_before"]
    rows.append(("load before", f"{load:.2f} on {r['machine']['cpu_count']} CPUs"))
    rows.append(("verdict", "OK" if r["ok"] else "FAILED: " + "; ".join(r["problems"])))
    return table("Postyard ingest benchmark (postyard serve)", rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="/v1/batch requests (20)")
    parser.add_argument("--batch-size", type=int, default=1000, help="operations each (1000)")
    parser.add_argument("--singles", type=int, default=3000, help="single calls per kind (3000)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument(
        "--database-url",
        help="SQLite URL of a new file, or a PostgreSQL server URL on which a throw-away "
        "database is created and dropped (default: SQLite in a temporary directory)",
    )
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSONL to append")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    parser.add_argument("--note", help="free text stored with the result")
    args = parser.parse_args(argv)
    if min(args.batches, args.batch_size, args.singles, args.concurrency) <= 0:
        parser.error("--batches, --batch-size, --singles and --concurrency must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(
        "ingest.py",
        lambda: [run(args)],
        lambda record: print(summary(record)),
        args.results,
        not args.no_record,
    )


if __name__ == "__main__":
    sys.exit(main())
