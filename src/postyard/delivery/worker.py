"""The delivery worker: claim a batch, route each message at send time, send, record.

Database work runs in a thread so that in `postyard serve` the API shares the
event loop with the worker without waiting on it; SMTP work runs concurrently,
bounded per server by its connection pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiosmtplib
from sqlalchemy import func, select

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
from postyard.routing import CampaignType, Role, Via
from postyard.secretbox import SecretBox, secret_box

log = logging.getLogger(__name__)

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


class Worker:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        box: SecretBox | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self.owner = f"{settings.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.box = box or secret_box(settings)
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
        try:
            while not stop.is_set():
                if await self.run_once() == 0:
                    await self.pools.retire_idle()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.settings.worker_poll_seconds)
        finally:
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
        attempts = await asyncio.gather(*(self._attempt(d, routes) for d in claimed))
        await asyncio.to_thread(self._record, attempts)
        return len(claimed)

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
        try:
            async with self.pools.for_endpoint(endpoint).connection() as client:
                _, response = await client.sendmail(
                    delivery.from_address, [delivery.to_address], data
                )
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
            return Attempt(delivery, outcome)
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
        return Attempt(delivery, outcome, hard_bounce=is_hard_bounce(reply))

    def _record(self, attempts: Sequence[Attempt]) -> None:
        with self.database.session() as session:
            outbox.record(session, self.owner, [a.outcome for a in attempts], self.clock())
            for attempt in attempts:
                if attempt.hard_bounce:
                    outbox.suppress(
                        session,
                        attempt.delivery.workspace_id,
                        attempt.delivery.to_address,
                        f"hard bounce: {attempt.outcome.smtp_response}",
                    )
        for attempt in attempts:
            outcome = attempt.outcome
            log.info(
                "delivery %s workspace=%s status=%s server=%s via=%s reply=%s",
                outcome.delivery_id,
                attempt.delivery.workspace_id,
                outcome.status,
                outcome.smtp_server_id,
                outcome.route_via,
                outcome.smtp_response or outcome.last_error,
            )
