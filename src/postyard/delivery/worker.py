"""The delivery worker: claim a batch, route each message at send time, send, record.

Database work runs in a thread so that in `postyard serve` the API shares the
event loop with the worker without waiting on it; SMTP work runs concurrently,
bounded per server by its connection pool.

Outcomes are recorded as the batch goes, not only at its end: every `flush_seconds` (1 s,
or a third of the lease when that is shorter) the outcomes finished so far are written and,
in the same transaction, the lease of the rows still in flight is pushed forward, for as
long as this worker still holds them. A batch slower than `lease_seconds` (a slow server,
few connections) is therefore never claimed again by another worker while it is being sent;
a row whose lease was lost all the same (this worker stalled past it) is not started here.

Stopping (SIGTERM) never leaves a row half-recorded: messages of the batch in hand that
have not begun their SMTP transaction are handed back at once; transactions under way get
`grace_seconds` to finish, and any still running then are cut and handed back too, as
deferred and due at once (the server may have taken the message: a duplicate at most for
each of those). Each write of outcomes and hand-backs is one transaction.

A server the worker cannot reach (refused, timed out, 421) is marked unreachable, and cleared
when reached again (`reachability`); with the workspace's failover on, its campaign type goes
through the primary All Emails server meanwhile. A database that goes away (a PostgreSQL
restart) does not stop the worker: the claim is tried again, and a claimed batch keeps its
routes and outcomes until they can be written.

When idle the worker polls every `worker_poll_seconds`; `wake()` (thread-safe) cuts the
wait short, and `postyard serve` calls it whenever its own API or jobs queue mail.
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
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import aiosmtplib
from sqlalchemy import Row, case, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from postyard import routing
from postyard.clock import Clock, utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.models import Delivery, SmtpServer, Workspace
from postyard.delivery import outbox, reachability, transaction
from postyard.delivery.endpoints import (
    Endpoint,
    HostGuard,
    HostNotAllowed,
    default_relay,
    endpoint_for,
    host_guard,
)
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
from postyard.delivery.throttle import Throttle
from postyard.metrics import Metrics, server_label
from postyard.routing import CampaignType, Role, Via
from postyard.secretbox import SecretBox, secret_box

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_GRACE_SECONDS = 20.0
"""How long SMTP transactions under way may take to finish once the worker is told to stop."""

DATABASE_RETRY_SECONDS = 1.0
"""How long the worker waits before trying a database that failed (restarting, failing over)."""

BATCHES_IN_FLIGHT = 2
"""Batches a worker has in hand at once: while one is being claimed or recorded, the other's
messages keep the connections busy (with one, every connection waited at each batch's end)."""

FLUSH_SECONDS = 1.0
"""How often a batch in progress records its finished outcomes and renews its lease."""

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

    has_default_relay: bool = False
    servers: dict[int, list[routing.Server]] = field(default_factory=lambda: defaultdict(list))
    endpoints: dict[int, Endpoint] = field(default_factory=dict)
    suppressed: dict[int, set[str]] = field(default_factory=dict)
    unreachable: set[int] = field(default_factory=set)
    """Servers marked unreachable; kept up to date as the batch finds them down or back."""
    failover: set[int] = field(default_factory=set)
    """Workspaces whose failover setting is on."""
    trials: set[int] = field(default_factory=set)
    """Marked servers that take one message of this batch as a trial instead of failing over."""
    resolved: dict[tuple[int, str], routing.Route] = field(default_factory=dict)
    """The routes worked out so far, by workspace and campaign type: the rules give the same
    answer for every message of a type until a server is found down or back."""

    def resolve(self, workspace_id: int, campaign_type: str) -> routing.Route:
        """The route by the rules (R5, R7, failover); a failed-over type's own server takes
        the batch's trial message when one is due, to find out whether it is back."""
        route = self.resolved.get((workspace_id, campaign_type))
        if route is None:
            route = self.resolved[workspace_id, campaign_type] = routing.resolve(
                self.servers[workspace_id],
                CampaignType(campaign_type),
                self.has_default_relay,
                unreachable=self.unreachable,
                failover=workspace_id in self.failover,
            )
        if route.via == Via.FAILOVER and route.down is not None and route.down.id in self.trials:
            self.trials.discard(route.down.id)
            return routing.Route(route.campaign_type, route.down, Via.SPECIFIC)
        return route

    def note_reachability(self, server_id: int, down: bool) -> bool:
        """Note a server found down or reachable; True when that is news to the batch (its
        routes are then worked out again), so that it is written once per change of state."""
        if (server_id in self.unreachable) == down:
            return False
        if down:
            self.unreachable.add(server_id)
        else:
            self.unreachable.discard(server_id)
        self.resolved.clear()
        return True


@dataclass(frozen=True)
class Attempt:
    delivery: Claimed
    outcome: Outcome
    hard_bounce: bool = False
    server: str = "none"
    """The metrics label of the server it went to: its id, `default` or `none`."""


@dataclass(eq=False)
class _Batch:
    """The attempts of one claimed batch, and how far their recording has got."""

    tasks: dict[asyncio.Task[Attempt], Claimed]
    flush_at: float
    """The event loop's time of the next flush."""
    recorded: set[asyncio.Task[Attempt]] = field(default_factory=set)
    """Attempts whose outcome a flush has already written."""
    lost: set[int] = field(default_factory=set)
    """Ids whose lease another worker took while they were in flight: never written here."""


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
        guard: HostGuard | None = None,
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._wake_pending = False
        self.lease = timedelta(seconds=settings.lease_seconds)
        self.flush_seconds = min(FLUSH_SECONDS, settings.lease_seconds / 3)
        self.policy = RetryPolicy(settings.retry_base_seconds, settings.retry_max_seconds)
        self.pools = Pools(settings.hostname, Throttle(database, self.owner))
        self.guard = guard or host_guard(settings)
        self.trials = reachability.Trials(
            min(settings.retry_max_seconds, reachability.MAX_TRIAL_SECONDS)
        )
        self.default_relay = (
            default_relay(settings.default_smtp_url, settings.smtp_timeout_seconds)
            if settings.default_smtp_url
            else None
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, polling when there is nothing due, or woken."""
        log.info("delivery worker %s started", self.owner)
        self._stop = stop
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(self._run_batches(stop) for _ in range(BATCHES_IN_FLIGHT)))
        finally:
            self._stop = None
            self._loop = None
            await self.pools.close()
            log.info("delivery worker %s stopped", self.owner)

    async def _run_batches(self, stop: asyncio.Event) -> None:
        """One batch after another until `stop` is set."""
        while not stop.is_set():
            # Cleared before the claim: mail queued from here on wakes the next wait.
            self._wakeup.clear()
            self._wake_pending = False
            try:
                if await self.run_once() == 0:
                    await self._idle(stop)
            except DBAPIError as error:  # the claim failed: nothing is in hand, try again
                self._database_failed(error)
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), DATABASE_RETRY_SECONDS)
            except Exception:  # a bug must not end delivery: that batch waits out its lease
                log.exception("delivery worker %s: a batch failed; carrying on", self.owner)
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), DATABASE_RETRY_SECONDS)

    def wake(self) -> None:
        """Cut the idle wait short: mail is due. Safe to call from any thread, at any time;
        calls between two rounds of the worker coalesce into one wake-up."""
        loop = self._loop
        if loop is None or self._wake_pending:
            return
        self._wake_pending = True
        with suppress(RuntimeError):  # the loop has closed: the worker is gone
            loop.call_soon_threadsafe(self._wakeup.set)

    async def _idle(self, stop: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wakeup.wait())}
        try:
            await asyncio.wait(
                waits,
                timeout=self.settings.worker_poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiting in waits:
                waiting.cancel()

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
        await self.pools.retire_idle()
        claimed = await self._claim()
        if not claimed:
            return 0
        routes = await self._despite_outages(self._load_routes, claimed)
        batch = _Batch(
            {asyncio.create_task(self._attempt(d, routes)): d for d in claimed},
            flush_at=asyncio.get_running_loop().time() + self.flush_seconds,
        )
        attempts, releases = await self._attempt_all(batch)
        # Not cancellable: the rest of the batch's outcomes are written whole or not at all.
        await asyncio.shield(self._despite_outages(self._record, attempts, releases))
        return len(claimed)

    async def _despite_outages(self, work: Callable[..., T], *args: Any) -> T:
        """Run database `work` in a thread, again and again while the database is away
        (restarting, failing over), until it succeeds or the worker is told to stop.

        A claimed batch must not be dropped for want of a database: its rows would wait for
        their lease to run out, and the messages already sent would be sent again."""
        while True:
            try:
                return await asyncio.to_thread(work, *args)
            except DBAPIError as error:
                if self._stop is not None and self._stop.is_set():
                    raise
                self._database_failed(error)
                await asyncio.sleep(DATABASE_RETRY_SECONDS)

    def _database_failed(self, error: DBAPIError) -> None:
        cause = error.orig if error.orig is not None else error
        log.warning(
            "delivery worker %s: the database failed (%s: %s); retrying in %g s",
            self.owner,
            type(cause).__name__,
            str(cause).strip().splitlines()[0] if str(cause).strip() else "",
            DATABASE_RETRY_SECONDS,
        )

    async def _attempt_all(self, batch: _Batch) -> tuple[list[Attempt], list[Release]]:
        """Attempt the batch concurrently, recording outcomes and renewing the lease as it
        goes; when the worker is told to stop meanwhile, hand back what has not begun at once
        and what is still under way after the grace period. Returns what is left to write."""
        pending = await self._await(batch, set(batch.tasks), self._stop)
        started: set[int] = set()
        if pending:
            started = await self._wind_down(batch, pending)
        attempts: list[Attempt] = []
        releases: list[Release] = []
        for task, delivery in batch.tasks.items():
            if task in batch.recorded or delivery.id in batch.lost:
                continue
            if task not in pending:
                attempts.append(task.result())
            elif task.done() and not task.cancelled() and task.exception() is None:
                attempts.append(task.result())  # finished within the grace period
            else:  # cancelled, or cut and not yet closed: its row goes back to the queue
                releases.append(Release(delivery, started=delivery.id in started))
        return attempts, releases

    async def _await(
        self,
        batch: _Batch,
        pending: set[asyncio.Task[Attempt]],
        stop: asyncio.Event | None = None,
        timeout: float | None = None,
    ) -> set[asyncio.Task[Attempt]]:
        """Wait until the attempts are done, `stop` is set or `timeout` has passed, flushing
        every `flush_seconds` meanwhile; returns the attempts still pending.

        It wakes only for those (not for each attempt that ends), so a batch costs the same
        whatever its size."""
        loop = asyncio.get_running_loop()
        remaining = {task for task in pending if not task.done()}
        if not remaining:
            return set()
        deadline = None if timeout is None else loop.time() + timeout
        finished: asyncio.Future[None] = loop.create_future()

        def ended(task: asyncio.Task[Attempt]) -> None:
            remaining.discard(task)
            if not remaining and not finished.done():
                finished.set_result(None)

        for task in remaining:
            task.add_done_callback(ended)
        waits: set[asyncio.Future[Any]] = {finished}
        if stop is not None:
            waits.add(asyncio.ensure_future(stop.wait()))
        try:
            while remaining and not (stop is not None and stop.is_set()):
                now = loop.time()
                if deadline is not None and now >= deadline:
                    break
                until = batch.flush_at if deadline is None else min(batch.flush_at, deadline)
                await asyncio.wait(
                    waits, timeout=max(until - now, 0), return_when=asyncio.FIRST_COMPLETED
                )
                if remaining and loop.time() >= batch.flush_at:
                    await self._flush(batch, set(remaining))
        finally:
            for task in list(remaining):
                task.remove_done_callback(ended)
            for waiting in waits:
                waiting.cancel()
        return set(remaining)

    async def _flush(self, batch: _Batch, pending: set[asyncio.Task[Attempt]]) -> None:
        """Record the attempts finished since the last flush and renew the lease of the
        rest; an attempt whose row another worker has taken since is no longer ours: it is
        cancelled unless its SMTP transaction has begun, and never recorded here."""
        done = [
            task
            for task, delivery in batch.tasks.items()
            if task.done()
            and task not in batch.recorded
            and delivery.id not in batch.lost
            and not task.cancelled()
            and task.exception() is None
        ]
        attempts = [task.result() for task in done]
        # An attempt can end before its done callback takes it out of `pending`: it is
        # recorded above, so its row is no longer `sending` and must not be renewed.
        in_flight = {
            batch.tasks[task].id: task
            for task in pending
            if not task.done() and batch.tasks[task].id not in batch.lost
        }
        try:
            # Not cancellable: the outcomes and the renewal are written whole or not at all.
            held = await asyncio.shield(
                asyncio.to_thread(self._record, attempts, (), list(in_flight))
            )
        except Exception:  # the database failed: keep the outcomes for the next write
            log.exception("delivery worker %s: recording a batch in progress failed", self.owner)
            batch.flush_at = asyncio.get_running_loop().time() + self.flush_seconds
            return
        batch.recorded.update(done)
        batch.flush_at = asyncio.get_running_loop().time() + self.flush_seconds
        lost = set(in_flight) - held
        if lost:
            log.warning(
                "delivery worker %s lost the lease of %s message(s) in flight to another worker",
                self.owner,
                len(lost),
            )
            batch.lost.update(lost)
            for delivery_id in lost:
                if delivery_id not in self._transacting:
                    in_flight[delivery_id].cancel()

    async def _wind_down(self, batch: _Batch, pending: set[asyncio.Task[Attempt]]) -> set[int]:
        """Cancel the attempts not yet talking to a server, give the others the grace period,
        then cancel those too; returns the ids whose transaction had begun when cut."""
        tasks = batch.tasks
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
        # The lease of the transactions under way is still renewed while they finish.
        late = await self._await(batch, pending, timeout=self.grace_seconds)
        cut = {tasks[task].id for task in late}
        for task in late:
            task.cancel()
        if late:
            # Give the cut connections a moment to close; the outcome does not depend on it.
            await asyncio.wait(late, timeout=2)
        return cut

    async def _claim(self) -> list[Claimed]:
        """Lease a batch, then read its contents in a transaction of their own (on SQLite
        the lease's transaction holds the one write lock). Once rows are leased they are in
        hand: their contents are read again and again while the database is away, or they
        would wait out their lease before any worker could send them."""
        leased = await asyncio.to_thread(self._lease)
        if not leased:
            return []
        return await self._despite_outages(self._with_contents, leased)

    def _lease(self) -> list[Row[Any]]:
        """Lease as of the moment the thread runs: a lease counted from before a wait for a
        free thread would be partly spent before the batch began."""
        with self.database.session() as session:
            return outbox.lease_due(
                session, self.owner, self.settings.worker_batch_size, self.clock(), self.lease
            )

    def _with_contents(self, leased: Sequence[Row[Any]]) -> list[Claimed]:
        with self.database.session() as session:
            return outbox.with_contents(session, leased)

    def _next_due(self) -> datetime | None:
        with self.database.session() as session:
            return session.scalar(
                select(func.min(Delivery.next_attempt_at)).where(
                    Delivery.status.in_([*CLAIMABLE, Status.SENDING])
                )
            )

    def _load_routes(self, claimed: Sequence[Claimed]) -> Routes:
        routes = Routes(has_default_relay=self.default_relay is not None)
        workspace_ids = {d.workspace_id for d in claimed}
        with self.database.session() as session:
            for server in session.scalars(
                select(SmtpServer).where(SmtpServer.workspace_id.in_(workspace_ids))
            ):
                routes.servers[server.workspace_id].append(
                    routing.Server(server.id, server.name, Role(server.role), server.position)
                )
                routes.endpoints[server.id] = endpoint_for(
                    server, self.box, self.settings.smtp_timeout_seconds, self.guard
                )
                if server.unreachable_since is not None:
                    routes.unreachable.add(server.id)
            routes.failover.update(
                session.scalars(
                    select(Workspace.id).where(
                        Workspace.id.in_(workspace_ids), Workspace.failover.is_(True)
                    )
                )
            )
            routes.trials = self.trials.due(routes.unreachable)
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
        route = routes.resolve(delivery.workspace_id, delivery.campaign_type)
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
            return self._refused_here(delivery, f"render_error: {error}", now)
        try:
            addresses = transaction.envelope(delivery.from_address, delivery.to_address)
        except ValueError as error:
            return self._refused_here(delivery, f"invalid_address: {error}", now)
        server_id = endpoint.server_id
        server = server_label(server_id, default_relay=True)
        down: str | None = None
        opening = transaction.opening(addresses, data)
        try:
            async with self.pools.for_endpoint(endpoint).connection(opening) as session:
                self._transacting.add(delivery.id)
                began = time.perf_counter()
                try:
                    response = await transaction.send_enveloped(session, addresses, data)
                finally:
                    self._transacting.discard(delivery.id)
                    self.metrics.observe_transaction(server, time.perf_counter() - began)
        except aiosmtplib.SMTPRecipientsRefused as refused:
            first = refused.recipients[0]
            reply = Reply(first.code, first.message)
            down = reachability.unreachable_reason(refused)
        except HostNotAllowed as refusal:
            outcome = Outcome(
                delivery.id,
                Status.FAILED,
                self.clock(),
                smtp_server_id=server_id,
                route_via=via,
                last_error=refusal.error,
            )
            return Attempt(delivery, outcome, server=server)
        except ConnectionFailed as failure:
            reply = Reply(None, str(failure))
            down = reachability.unreachable_reason(failure)
        except aiosmtplib.SMTPResponseException as error:
            reply = Reply(error.code, error.message)
            down = reachability.unreachable_reason(error)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            reply = Reply(None, f"connection to {endpoint.name} lost: {describe_error(error)}")
        else:
            sent_at = self.clock()
            outcome = Outcome(
                delivery.id,
                Status.SENT,
                sent_at,
                smtp_server_id=server_id,
                route_via=via,
                smtp_response=f"{response.code} {response.message}",
                sent_at=sent_at,
            )
            if server_id is not None and routes.note_reachability(server_id, down=False):
                await self._write_reachability(server_id, None)
            return Attempt(delivery, outcome, server=server)
        if server_id is not None and routes.note_reachability(server_id, down=down is not None):
            await self._write_reachability(server_id, down)
        return self._failed_attempt(delivery, reply, endpoint, via)

    def _refused_here(self, delivery: Claimed, reason: str, now: datetime) -> Attempt:
        """A message no server could take as it is: failed, without trying."""
        return Attempt(delivery, Outcome(delivery.id, Status.FAILED, now, last_error=reason))

    async def _write_reachability(self, server_id: int, down: str | None) -> None:
        """Mark the server unreachable (`down` says why) or reachable: once per change of
        state (see `Routes.note_reachability`), never per message."""
        try:
            await asyncio.to_thread(self._mark_reachability, server_id, down)
        except Exception:  # the database failed: the next batch reads the old state and retries
            log.exception(
                "delivery worker %s: recording server %s's reachability failed",
                self.owner,
                server_id,
            )

    def _mark_reachability(self, server_id: int, down: str | None) -> None:
        with self.database.session() as session:
            if down is None:
                reachability.mark_reachable(session, server_id)
            else:
                reachability.mark_unreachable(session, server_id, self.clock(), down)

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

    def _record(
        self,
        attempts: Sequence[Attempt],
        releases: Sequence[Release] = (),
        renew: Sequence[int] = (),
    ) -> set[int]:
        """Write outcomes and hand-backs, and renew the lease of the rows in `renew`, in one
        transaction; returns the ids in `renew` this worker still holds."""
        now = self.clock()
        with self.database.session() as session:
            outbox.record(session, self.owner, [a.outcome for a in attempts], now)
            self._release(session, releases, now)
            held = outbox.renew(session, self.owner, renew, now, self.lease)
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
        if log.isEnabledFor(logging.INFO) and (attempts or releases):
            # One record for the batch, a line per outcome: a record per line cost ~15 µs
            # each, 5 % of a delivery. The command line's formatter heads every line.
            lines = [outcome_line(a) for a in attempts] + [release_line(r) for r in releases]
            log.info("%s", "\n".join(lines))
        return held

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
_BARE_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]+")


def _value(value: object) -> str:
    """A logfmt value: bare when it can be, else quoted with escapes, so a server's reply
    can neither break the line nor forge a field."""
    text = "-" if value is None else str(value)
    if _BARE_VALUE.fullmatch(text):
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
    if detail:
        detail = detail[:300]
        if "@" in detail:  # the search for addresses costs more than the rest of the line
            detail = _ADDRESS.sub("<address>", detail)
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
        ("detail", detail or None),
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
