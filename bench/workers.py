"""Scale-out: delivery throughput with 1, 2 and 4 worker processes on PostgreSQL, beside one
worker on SQLite, on the same workload as bench/delivery.py.

Run from the repository root::

    .venv/bin/python bench/workers.py [--postgres URL] [--workers 1,2,4] [--messages 20000]

Each configuration is one `delivery.py` run (its own sinks, throw-away database, checks that
every message arrived where the routing rules say); this script only chooses the
configurations and prints them side by side. CPU time per message is the figure to compare
on a busy machine; messages per second shows what the extra processes buy. Each run is
appended to bench/results/workers.jsonl. Exit status: 0 when every run delivered everything.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import delivery
from common import RESULTS_DIR, run_main

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument("--workers", default="1,2,4", help="worker counts on PostgreSQL")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite reference")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "workers.jsonl")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--note")
    return parser.parse_args(argv)


def configurations(args: argparse.Namespace) -> Iterator[list[str]]:
    """delivery.py arguments for each run: SQLite (one worker), then PostgreSQL."""
    common = ["--messages", str(args.messages), "--no-smtp-source", "--no-record"]
    if args.note:
        common += ["--note", args.note]
    if not args.no_sqlite:
        yield common
    for workers in args.workers.split(","):
        yield [*common, "--database-url", args.postgres, "--workers", workers.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def records() -> Iterator[dict[str, Any]]:
        delivery.check_tools(need_source=False)
        for arguments in configurations(args):
            record = delivery.run(delivery.parse_args(arguments))
            record["benchmark"] = "workers"
            print(line(record), flush=True)
            yield record

    print(f"{'database':<12} {'workers':>7} {'msg/s':>8} {'CPU us/msg':>11} {'load':>6}  verdict")
    return run_main("workers.py", records, lambda _: None, args.results, not args.no_record)


def line(record: dict[str, Any]) -> str:
    return (
        f"{record['database']['backend']:<12} {record['workers']:>7} "
        f"{record['msgs_per_s']:>8,.0f} {record['cpu_us_per_msg']:>11,.0f} "
        f"{record['machine']['load_before']:>6.2f}  "
        f"{'OK' if record['ok'] else 'FAILED: ' + '; '.join(record['problems'])}"
    )


if __name__ == "__main__":
    sys.exit(main())
