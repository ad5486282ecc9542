"""Prometheus metrics: what the worker counts as it records outcomes, and the queue as the
database shows it at scrape time.

Each app (and each `postyard worker`) has a registry of its own rather than
prometheus-client's global one, so that several apps in one process (the
tests) never see each other's counts. In `postyard serve` the worker gets the
app's `Metrics`, so the counters it increments are the ones `GET /metrics` shows.

Labels are ids and campaign types only: never a server's name or address, a
recipient, or anything from a message.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from postyard.clock import Clock, utcnow
from postyard.db.engine import Database
from postyard.db.models import Delivery
from postyard.delivery.policy import Status

log = logging.getLogger(__name__)

OUTCOMES = (Status.SENT, Status.DEFERRED, Status.FAILED, Status.SUPPRESSED)
QUEUE_STATUSES = (Status.QUEUED, Status.DEFERRED, Status.SENDING)
WAITING = (Status.QUEUED, Status.DEFERRED)

# The label for a delivery that went through POSTYARD_DEFAULT_SMTP_URL, and for one that
# never reached a server (no route, suppressed, failed to render).
DEFAULT_RELAY = "default"
NO_SERVER = "none"

# Seconds from taking a connection from the pool to the server's reply to the message.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def server_label(server_id: int | None, *, default_relay: bool = False) -> str:
    if server_id is not None:
        return str(server_id)
    return DEFAULT_RELAY if default_relay else NO_SERVER


class Metrics:
    """The counters and histogram the worker feeds, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "postyard_deliveries",
            "Delivery outcomes recorded by the worker, by SMTP server id and campaign type.",
            ["outcome", "smtp_server", "campaign_type"],
            registry=self.registry,
        )
        self.released = Counter(
            "postyard_deliveries_released",
            "Deliveries handed back to the queue unfinished because the worker was stopping.",
            registry=self.registry,
        )
        self.smtp_seconds = Histogram(
            "postyard_smtp_transaction_seconds",
            "Seconds per message from taking a connection from the pool to the server's reply.",
            ["smtp_server"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._latency: dict[str, Histogram] = {}
        """`smtp_seconds` bound to each server label: `labels()` validates and locks on
        every call, and the worker observes once per message."""
        self._queue: QueueCollector | None = None
        self._exposed = self.registry

    def watch_queue(self, database: Database, clock: Clock = utcnow) -> Metrics:
        """Add the queue gauges, read from `database` at each scrape (once per registry)."""
        if self._queue is None:
            self._queue = QueueCollector(database, clock)
            self.registry.register(self._queue)
            if self._exposed is not self.registry:
                self._exposed.register(self._queue)
        return self

    def gather_processes(self, directory: Path) -> Metrics:
        """Expose the counters that worker processes write to `directory` (prometheus-client's
        multiprocess mode: each child has PROMETHEUS_MULTIPROC_DIR set), summed across them,
        in place of this process's own, which then count nothing: `postyard serve --workers`."""
        exposed = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(exposed, path=str(directory))
        if self._queue is not None:
            exposed.register(self._queue)
        self._exposed = exposed
        return self

    def count(self, outcomes: Iterable[tuple[str, str, str]]) -> None:
        """Count (outcome, smtp_server, campaign_type) triples: one increment per label set."""
        for (outcome, server, campaign_type), n in Tally(outcomes).items():
            if outcome in OUTCOMES:
                self.deliveries.labels(outcome, server, campaign_type).inc(n)

    def observe_transaction(self, server: str, seconds: float) -> None:
        latency = self._latency.get(server)
        if latency is None:
            latency = self._latency[server] = self.smtp_seconds.labels(server)
        latency.observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self._exposed)


class QueueCollector(Collector):
    """Queue depth by status and the age of the oldest waiting message, computed per scrape."""

    def __init__(self, database: Database, clock: Clock = utcnow) -> None:
        self.database = database
        self.clock = clock

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without describe() the registry would call collect(), and so the database, on
        # registration.
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "postyard_queue_depth",
                "Deliveries waiting or in flight, by status.",
                labels=["status"],
            ),
            GaugeMetricFamily(
                "postyard_queue_oldest_age_seconds",
                "Age in seconds of the oldest queued or deferred delivery; 0 when none waits.",
            ),
            GaugeMetricFamily(
                "postyard_queue_database_up",
                "1 if the queue could be read from the database at this scrape, else 0.",
            ),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth, oldest, up = self._families()
        try:
            counts, oldest_created = self._read()
        except Exception:  # a scrape must say the database is down, not fail
            log.exception("metrics: cannot read the queue from the database")
            up.add_metric([], 0)
            yield up
            return
        for status in QUEUE_STATUSES:
            depth.add_metric([status.value], counts.get(status.value, 0))
        age = 0.0
        if oldest_created is not None:
            age = max((self.clock() - oldest_created).total_seconds(), 0.0)
        oldest.add_metric([], age)
        up.add_metric([], 1)
        yield from (depth, oldest, up)

    def _read(self) -> tuple[dict[str, int], datetime | None]:
        with self.database.session() as session:
            rows = session.execute(
                select(Delivery.status, func.count(), func.min(Delivery.created_at))
                .where(Delivery.status.in_(QUEUE_STATUSES))
                .group_by(Delivery.status)
            ).all()
        counts = {status: count for status, count, _ in rows}
        waiting = [created for status, _, created in rows if status in WAITING and created]
        return counts, min(waiting, default=None)
