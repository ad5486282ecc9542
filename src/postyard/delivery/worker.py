"""The delivery worker: claim a batch, route each message at send time, send, record.

Database work runs in a thread so that in `postyard serve` the API shares the
event loop with the worker without waiting on it; SMTP work runs concurrently,
bounded per server by its connection pool.

Stopping (SIGTERM) never leaves a row half-recorded: messages of the batch in hand that
have not begun their SMTP transaction are handed back at once; transactions under way get
`grace_seconds` to finish, and any still running then are cut and handed back too, as
deferred and due at once (the server may have taken the message: a duplicate at most for
each of those). The batch's outcomes and hand-backs are written in one transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiosmtplib
from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from postyard import routing
from postyard.clock import Clock, utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery, SmtpServer
from postyard.delivery import outbox
from postyard.delivery.endpoints import Endpoint, default_relay, endpoint_for
from postyard.delivery.message import build_message
from postyard.delivery.outbox import Claimed, Outcome
from postyard.delivery.policy import (
    CLAIMABLE,
    Reply,
    RetryPolicy,
    Status,
    after_failure,
    is_hard_bounce,
)
from postyard.delivery.pool import ConnectionFailed, Pools, describe_error
from postyard.metrics import Metrics, server_label
from postyard.routing import CampaignType, Role, Via
from postyard.secretbox import SecretBox, secret_box

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 20.0
"""How long SMTP transactions under way may take to finish once the worker is told to stop."""

CUT_SHORT = (
    "released: the worker stopped during the SMTP transaction; retried at once "
    "(the server may have accepted it)"
)

NO_ROUTE = Reply(
    None,
    "no_route: the workspace has no SMTP server and no default relay is configured; "
    "waiting for a server to be added",
)


@dataclass
class Routes:
    """The servers of the workspaces in one batch, read once for the whole batch (R6)."""

    servers: dict[int, list[routing.Server]] = field(default_factory=lambda: defaultdict(list))
    endpoints: dict[int, Endpoint] = field(default_factory=dict)
    suppressed: dict[int, set[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    delivery: Claimed
    outcome: Outcome
    hard_bounce: bool = False
    server: str = "none"
    """The metrics label of the server it went to: its id, `default` or `none`."""


@dataclass(frozen=True)
class Release:
    """A claimed delivery handed back unfinished because the worker is stopping."""

    delivery: Claimed
    started: bool
    """Whether its SMTP transaction had begun: then the attempt counts, else it is undone."""


class Worker:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        box: SecretBox | None = None,
        metrics: Metrics | None = None,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self.owner = f"{settings.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.box = box or secret_box(settings)
        self.metrics = metrics or Metrics()
        self.grace_seconds = grace_seconds
        self._stop: asyncio.Event | None = None
        self._transacting: set[int] = set()
        self.policy = RetryPolicy(settings.retry_base_seconds, settings.retry_max_seconds)
        self.pools = Pools(settings.hostname)
        self.default_relay = (
            default_relay(settings.default_smtp_url, settings.smtp_timeout_seconds)
            if settings.default_smtp_url
            else None
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, polling when there is nothing due."""
        log.info("delivery worker %s started", self.owner)
        self._stop = stop
        try:
            while not stop.is_set():
                if await self.run_once() == 0:
                    await self.pools.retire_idle()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.settings.worker_poll_seconds)
        finally:
            self._stop = None
            await self.pools.close()
            log.info("delivery worker %s stopped", self.owner)

    async def drain(self, timeout: float = 30.0) -> None:
        """Deliver until nothing is waiting or in flight; for the demo and the tests."""
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                if await self.run_once():
                    continue
                due = await asyncio.to_thread(self._next_due)
                if due is None:
                    return
                if asyncio.get_running_loop().time() >= deadline:
                    raise TimeoutError(f"deliveries still pending after {timeout} s")
                wait = (due - self.clock()).total_seconds()
                await asyncio.sleep(min(max(wait, 0.01), 0.5))
        finally:
            await self.pools.close()

    async def run_once(self) -> int:
        """Claim one batch and see every message in it to an outcome; returns its size."""
        now = self.clock()
        claimed = await asyncio.to_thread(self._claim, now)
        if not claimed:
            return 0
        routes = await asyncio.to_thread(self._load_routes, claimed)
        attempts, releases = await self._attempt_all(claimed, routes)
        # Not cancellable: the outcomes of the batch are written whole or not at all.
        await asyncio.shield(asyncio.to_thread(self._record, attempts, releases))
        return len(claimed)

    async def _attempt_all(
        self, claimed: Sequence[Claimed], routes: Routes
    ) -> tuple[list[Attempt], list[Release]]:
        """Attempt the batch concurrently; when the worker is told to stop meanwhile, hand
        back what has not begun at once and what is still under way after the grace period."""
        tasks = {asyncio.create_task(self._attempt(d, routes)): d for d in claimed}
        stop = self._stop
        pending: set[asyncio.Task[Attempt]] = set(tasks)
        if stop is None:
            await asyncio.wait(pending)
            pending = set()
        else:
            stopping = asyncio.ensure_future(stop.wait())
            try:
                while pending and not stop.is_set():
                    _, pending = await asyncio.wait(
                        pending | {stopping}, return_when=asyncio.FIRST_COMPLETED
                    )
                    pending.discard(stopping)  # type: ignore[arg-type]
            finally:
                stopping.cancel()
        started: set[int] = set()
        if pending:
            started = await self._wind_down(pending, tasks)
        attempts: list[Attempt] = []
        releases: list[Release] = []
        for task, delivery in tasks.items():
            if task not in pending:
                attempts.append(task.result())
            elif task.done() and not task.cancelled() and task.exception() is None:
                attempts.append(task.result())  # finished within the grace period
            else:  # cancelled, or cut and not yet closed: its row goes back to the queue
                releases.append(Release(delivery, started=delivery.id in started))
        return attempts, releases

    async def _wind_down(
        self, pending: set[asyncio.Task[Attempt]], tasks: dict[asyncio.Task[Attempt], Claimed]
    ) -> set[int]:
        """Cancel the attempts not yet talking to a server, give the others the grace period,
        then cancel those too; returns the ids whose transaction had begun when cut."""
        under_way = 0
        for task in pending:
            if tasks[task].id in self._transacting:
                under_way += 1
            else:
                task.cancel()
        log.info(
            "delivery worker %s stopping: %s message(s) handed back, %s transaction(s) "
            "under way get %g s to finish",
            self.owner,
            len(pending) - under_way,
            under_way,
            self.grace_seconds,
        )
        _, late = await asyncio.wait(pending, timeout=self.grace_seconds)
        cut = {tasks[task].id for task in late}
        for task in late:
            task.cancel()
        if late:
            # Give the cut connections a moment to close; the outcome does not depend on it.
            await asyncio.wait(late, timeout=2)
        return cut

    def _claim(self, now: datetime) -> list[Claimed]:
        with self.database.session() as session:
            return outbox.claim(
                session,
                self.owner,
                self.settings.worker_batch_size,
                now,
                timedelta(seconds=self.settings.lease_seconds),
            )

    def _next_due(self) -> datetime | None:
        with self.database.session() as session:
            return session.scalar(
                select(func.min(Delivery.next_attempt_at)).where(
                    Delivery.status.in_([*CLAIMABLE, Status.SENDING])
                )
            )

    def _load_routes(self, claimed: Sequence[Claimed]) -> Routes:
        routes = Routes()
        workspace_ids = {d.workspace_id for d in claimed}
        with self.database.session() as session:
            for server in session.scalars(
                select(SmtpServer).where(SmtpServer.workspace_id.in_(workspace_ids))
            ):
                routes.servers[server.workspace_id].append(
                    routing.Server(server.id, server.name, Role(server.role), server.position)
                )
                routes.endpoints[server.id] = endpoint_for(
                    server, self.box, self.settings.smtp_timeout_seconds
                )
            for workspace_id in workspace_ids:
                addresses = [d.to_address for d in claimed if d.workspace_id == workspace_id]
                routes.suppressed[workspace_id] = outbox.suppressed_among(
                    session, workspace_id, addresses
                )
        return routes

    async def _attempt(self, delivery: Claimed, routes: Routes) -> Attempt:
        now = self.clock()
        if delivery.to_address.lower() in routes.suppressed[delivery.workspace_id]:
            return Attempt(
                delivery,
                Outcome(
                    delivery.id,
                    Status.SUPPRESSED,
                    now,
                    last_error=outbox.SUPPRESSION_LIST,
                ),
            )
        route = routing.resolve(
            routes.servers[delivery.workspace_id],
            CampaignType(delivery.campaign_type),
            has_default_relay=self.default_relay is not None,
        )
        if route.server is not None and route.server.id is not None:
            endpoint = routes.endpoints[route.server.id]
        elif self.default_relay is not None:
            endpoint = self.default_relay
        else:
            return self._failed_attempt(delivery, NO_ROUTE, None, None)
        via = route.via
        try:
            data = build_message(delivery, now)
        except ValueError as error:
            return Attempt(
                delivery,
                Outcome(delivery.id, Status.FAILED, now, last_error=f"render_error: {error}"),
            )
        server = server_label(endpoint.server_id, default_relay=True)
        try:
            async with self.pools.for_endpoint(endpoint).connection() as client:
                self._transacting.add(delivery.id)
                began = time.perf_counter()
                try:
                    _, response = await client.sendmail(
                        delivery.from_address, [delivery.to_address], data
                    )
                finally:
                    self._transacting.discard(delivery.id)
                    self.metrics.observe_transaction(server, time.perf_counter() - began)
        except aiosmtplib.SMTPRecipientsRefused as refused:
            first = refused.recipients[0]
            reply = Reply(first.code, first.message)
        except ConnectionFailed as failure:
            reply = Reply(None, str(failure))
        except aiosmtplib.SMTPResponseException as error:
            reply = Reply(error.code, error.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            reply = Reply(None, f"connection to {endpoint.name} lost: {describe_error(error)}")
        else:
            outcome = Outcome(
                delivery.id,
                Status.SENT,
                self.clock(),
                smtp_server_id=endpoint.server_id,
                route_via=via,
                smtp_response=f"250 {response}",
                sent_at=self.clock(),
            )
            return Attempt(delivery, outcome, server=server)
        return self._failed_attempt(delivery, reply, endpoint, via)

    def _failed_attempt(
        self, delivery: Claimed, reply: Reply, endpoint: Endpoint | None, via: Via | None
    ) -> Attempt:
        verdict = after_failure(
            reply, self.clock(), delivery.attempts, delivery.expires_at, self.policy
        )
        outcome = Outcome(
            delivery.id,
            verdict.status,
            verdict.next_attempt_at,
            smtp_server_id=endpoint.server_id if endpoint else None,
            route_via=via,
            smtp_response=str(reply) if reply.code is not None else None,
            last_error=verdict.error,
        )
        server = server_label(
            endpoint.server_id if endpoint else None, default_relay=endpoint is not None
        )
        return Attempt(delivery, outcome, hard_bounce=is_hard_bounce(reply), server=server)

    def _record(self, attempts: Sequence[Attempt], releases: Sequence[Release] = ()) -> None:
        now = self.clock()
        with self.database.session() as session:
            outbox.record(session, self.owner, [a.outcome for a in attempts], now)
            self._release(session, releases, now)
            for attempt in attempts:
                if attempt.hard_bounce:
                    outbox.suppress(
                        session,
                        attempt.delivery.workspace_id,
                        attempt.delivery.to_address,
                        f"hard bounce: {attempt.outcome.smtp_response}",
                    )
        self.metrics.count(
            (a.outcome.status.value, a.server, a.delivery.campaign_type) for a in attempts
        )
        if releases:
            self.metrics.released.inc(len(releases))
        if log.isEnabledFor(logging.INFO):
            for attempt in attempts:
                log.info("%s", outcome_line(attempt))
            for release in releases:
                log.info("%s", release_line(release))

    def _release(self, session: Session, releases: Sequence[Release], now: datetime) -> None:
        """Hand rows back as queued or deferred, due now. A transaction that never began is
        not an attempt: its count is undone, and a message never tried goes back to queued."""
        for started in (False, True):
            ids = [r.delivery.id for r in releases if r.started is started]
            if not ids:
                continue
            attempts = Delivery.attempts if started else Delivery.attempts - 1
            values: dict[str, object] = {
                "status": case((attempts <= 0, Status.QUEUED.value), else_=Status.DEFERRED.value),
                "attempts": attempts,
                "next_attempt_at": now,
                "lease_owner": None,
                "updated_at": now,
            }
            if started:
                values["last_error"] = CUT_SHORT
            session.execute(
                update(Delivery)
                .where(
                    Delivery.id.in_(ids),
                    Delivery.lease_owner == self.owner,
                    Delivery.status == Status.SENDING,
                )
                .values(values)
                .execution_options(synchronize_session=False)
            )


_ADDRESS = re.compile(r"[^\s<>\"'(),;:\[\]]+@[^\s<>\"'(),;:\[\]]+")


def _value(value: object) -> str:
    """A logfmt value: bare when it can be, else quoted with escapes, so a server's reply
    can neither break the line nor forge a field."""
    text = "-" if value is None else str(value)
    if text and all(c.isalnum() or c in "-_.:/@+" for c in text) and text.isascii():
        return text
    return json.dumps(text)


def _reply_code(outcome: Outcome) -> str | None:
    text = outcome.smtp_response
    if text and text[:3].isdigit():
        return text[:3]
    return None


def outcome_line(attempt: Attempt) -> str:
    """One key=value line for a delivery outcome: ids, type, route, status, reply; never the
    message, a credential, or the recipient's address."""
    delivery, outcome = attempt.delivery, attempt.outcome
    detail = outcome.smtp_response if outcome.status is Status.SENT else outcome.last_error
    fields = (
        ("event", "delivery"),
        ("workspace", delivery.workspace_id),
        ("delivery", delivery.id),
        ("campaign_type", delivery.campaign_type),
        ("server", outcome.smtp_server_id),
        ("via", outcome.route_via),
        ("status", outcome.status.value),
        ("reply_code", _reply_code(outcome)),
        ("attempts", delivery.attempts),
        ("detail", _ADDRESS.sub("<address>", detail[:300]) if detail else None),
    )
    return " ".join(f"{key}={_value(value)}" for key, value in fields)


def release_line(release: Release) -> str:
    delivery = release.delivery
    fields = (
        ("event", "delivery"),
        ("workspace", delivery.workspace_id),
        ("delivery", delivery.id),
        ("campaign_type", delivery.campaign_type),
        ("status", "released"),
        ("in_transaction", "yes" if release.started else "no"),
        ("attempts", delivery.attempts if release.started else delivery.attempts - 1),
    )
    return " ".join(f"{key}={_value(value)}" for key, value in fields)
