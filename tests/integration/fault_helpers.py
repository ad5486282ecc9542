"""What the fault tests and bench/chaos.py share: queue many messages at once, run real
`postyard worker` processes, cut the database's connections, and count what the SMTP servers
took against what was queued (delivered, duplicated, missing)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
from sqlalchemy import func, make_url, select

from postyard.clock import utcnow
from postyard.db.engine import Database
from postyard.db.models import Delivery
from postyard.delivery.outbox import Letter, enqueue_many
from postyard.delivery.policy import Status

FROM = "Acme <news@acme.example>"
POSTYARD = Path(sys.executable).with_name("postyard")
QUEUE_CHUNK = 1000


def queue_many(
    database: Database,
    workspace_id: int,
    count: int,
    *,
    campaign_type: str = "newsletter",
    lifetime: timedelta = timedelta(days=3),
) -> list[int]:
    """Queue `count` distinct messages in bulk, as a newsletter send does; returns their ids."""
    ids: list[int] = []
    for start in range(0, count, QUEUE_CHUNK):
        letters = [
            Letter(
                campaign_type=campaign_type,
                to_address=f"reader{index}@example.com",
                from_address=FROM,
                subject=f"Issue {index}",
                text_body=f"Hello reader {index}.",
            )
            for index in range(start, min(start + QUEUE_CHUNK, count))
        ]
        with database.session() as session:
            ids += enqueue_many(session, workspace_id, letters, utcnow(), lifetime)
    return ids


def statuses(database: Database, workspace_id: int) -> Counter[str]:
    with database.session() as session:
        rows = session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.workspace_id == workspace_id)
            .group_by(Delivery.status)
        )
        return Counter({status: count for status, count in rows})


def message_ids(database: Database, workspace_id: int) -> set[str]:
    """The Message-IDs queued, as the sink sees them (with angle brackets)."""
    with database.session() as session:
        found = session.scalars(
            select(Delivery.message_id).where(Delivery.workspace_id == workspace_id)
        )
        return {value if value.startswith("<") else f"<{value}>" for value in found}


def in_flight(database: Database, workspace_id: int) -> set[int]:
    """Rows claimed and not yet recorded: at most these can be sent twice after a crash."""
    with database.session() as session:
        return set(
            session.scalars(
                select(Delivery.id).where(
                    Delivery.workspace_id == workspace_id, Delivery.status == Status.SENDING
                )
            )
        )


@dataclass(frozen=True)
class Tally:
    """What the SMTP servers took, against what was queued."""

    queued: int
    received: int
    distinct: int
    missing: int
    strangers: int
    """Messages taken that were never queued: always 0 unless something is badly wrong."""

    @property
    def duplicates(self) -> int:
        return self.received - self.distinct


def tally(queued: set[str], taken: Iterable[Mapping[str, int]]) -> Tally:
    """Add up the Message-ID counts of several sinks (a faulty one and its replacement)."""
    total: Counter[str] = Counter()
    for counts in taken:
        total.update(counts)
    return Tally(
        queued=len(queued),
        received=sum(total.values()),
        distinct=len(set(total) & queued),
        missing=len(queued - set(total)),
        strangers=len(set(total) - queued),
    )


def worker_environment(database_url: str, secret_key: str, **settings: object) -> dict[str, str]:
    """The environment of a `postyard worker` on this database, with settings as overrides."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("POSTYARD_")}
    env.update(POSTYARD_DATABASE_URL=database_url, POSTYARD_SECRET_KEY=secret_key)
    env.update({f"POSTYARD_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def start_worker(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A real `postyard worker` process; its output goes to `log` (it logs every delivery)."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [str(POSTYARD), "worker"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def terminate_backends(database_url: str) -> int:
    """Cut every other connection to this database, as a PostgreSQL restart does; returns how
    many. Only this test run's own database is touched, never the server's other users."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)
