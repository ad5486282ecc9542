"""Background work beside the delivery worker: newsletter sends, broadcast triggers, and the
periodic re-evaluation of segments with a time window.

Several processes may run jobs at once. A send or a trigger is claimed by an
`UPDATE … WHERE state = …` that only one of them can win, with a lease; each
batch renews the lease in the same transaction that queues the batch and moves
the cursor, and only if the lease is still the one this process took. So a
batch is queued exactly once: a process that stalled past its lease finds it
taken and stops, and a process that died leaves the cursor where its last
batch ended, for the next claimant to go on from there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from postyard.conditions import parse
from postyard.db.engine import Database
from postyard.db.models import BroadcastTrigger, Campaign
from postyard.delivery.outbox import Letter
from postyard.routing import CampaignType
from postyard.services import fanout, segments
from postyard.services.campaigns import State, TriggerState
from postyard.services.fanout import Composer, Tally
from postyard.services.runtime import Runtime

log = logging.getLogger(__name__)

REFRESH_INTERVAL = timedelta(minutes=1)
MAX_ERRORS = 1000


class _LeaseLost(Exception):
    """A job's lease was taken over while this process ran a batch of it."""


class Jobs:
    def __init__(
        self, database: Database, runtime: Runtime, *, batch_size: int = fanout.BATCH_SIZE
    ) -> None:
        self.database = database
        self.runtime = runtime
        self.batch_size = batch_size
        self.lease = timedelta(seconds=runtime.settings.lease_seconds)
        self._refreshed_at: datetime | None = None
        # Set when the process stops: a send in progress hands its lease back between two
        # batches, for another process to go on at once, rather than holding up the stop.
        self._halt = threading.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Run due jobs until `stop` is set, polling when there is nothing to do."""
        log.info("jobs runner started")
        halting = asyncio.create_task(self._halt_when(stop))
        try:
            while not stop.is_set():
                try:
                    handled = await asyncio.to_thread(self.run_due)
                except Exception:  # a failing database must not end the loop: retry later
                    log.exception("jobs round failed")
                    handled = 0
                if handled == 0:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(
                            stop.wait(), self.runtime.settings.worker_poll_seconds
                        )
        finally:
            halting.cancel()
        log.info("jobs runner stopped")

    async def _halt_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._halt.set()

    def run_due(self) -> int:
        """Send due newsletters and process pending triggers, each to the end; re-evaluate
        time-window segments at most once a minute. Returns how many sends and triggers ran."""
        handled = sum(self._send_newsletter(campaign_id) for campaign_id in self._due_newsletters())
        handled += sum(self._run_trigger(trigger_id) for trigger_id in self._due_triggers())
        self._refresh_time_windows()
        return handled

    def _due_newsletters(self) -> list[int]:
        with self.database.session() as session:
            return list(session.scalars(select(Campaign.id).where(self._newsletter_due())))

    def _newsletter_due(self) -> Any:
        now = self.runtime.clock()
        return and_(
            Campaign.type == CampaignType.NEWSLETTER.value,
            or_(
                and_(Campaign.state == State.SCHEDULED.value, Campaign.send_at <= now),
                and_(Campaign.state == State.SENDING.value, Campaign.lease_until < now),
            ),
        )

    def _due_triggers(self) -> list[int]:
        with self.database.session() as session:
            return list(
                session.scalars(
                    select(BroadcastTrigger.id)
                    .where(self._trigger_due())
                    .order_by(BroadcastTrigger.id)
                )
            )

    def _trigger_due(self) -> Any:
        now = self.runtime.clock()
        return or_(
            BroadcastTrigger.state == TriggerState.PENDING.value,
            and_(
                BroadcastTrigger.state == TriggerState.RUNNING.value,
                BroadcastTrigger.lease_until < now,
            ),
        )

    def _claim(self, table: Any, row_id: int, due: Any, running: str) -> datetime | None:
        """Take a job if it is still due; returns the lease, or None if another process won."""
        lease = self.runtime.clock() + self.lease
        with self.database.session() as session:
            claimed = session.execute(
                update(table)
                .where(table.id == row_id, due)
                .values(state=running, lease_until=lease)
                .execution_options(synchronize_session=False)
            )
            return lease if claimed.rowcount == 1 else None

    def _renew(self, session: Session, table: Any, row_id: int, lease: datetime) -> datetime | None:
        """Extend our lease, in the batch's transaction; None if the job is no longer ours."""
        renewed = self.runtime.clock() + self.lease
        result = session.execute(
            update(table)
            .where(table.id == row_id, table.lease_until == lease)
            .values(lease_until=renewed)
            .execution_options(synchronize_session=False)
        )
        return renewed if result.rowcount == 1 else None

    def _release(self, table: Any, row_id: int, lease: datetime) -> None:
        """Hand a job back: its lease runs out now, so that any process may take it over."""
        with self.database.session() as session:
            session.execute(
                update(table)
                .where(table.id == row_id, table.lease_until == lease)
                .values(lease_until=self.runtime.clock())
                .execution_options(synchronize_session=False)
            )
        log.info("%s %s: handed back on stopping", table.__tablename__, row_id)

    def _run(
        self,
        table: Any,
        row_id: int,
        due: Any,
        running: str,
        step: Callable[[Session, Any], bool],
    ) -> int:
        """Claim a job, then run `step` (one batch; True when the job is over) in one
        transaction after another, each renewing the lease; 1 if this process finished it.

        The lease is renewed after the step has done its reading and rendering, just before
        the commit: on SQLite the first write takes the database's one write lock, and
        renewing first held it through a whole batch's rendering, while delivery workers
        waited to claim and record."""
        lease = None if self._halt.is_set() else self._claim(table, row_id, due, running)
        if lease is None:
            return 0
        while True:
            if self._halt.is_set():
                self._release(table, row_id, lease)
                return 0
            try:
                with self.database.session() as session:
                    row = session.get_one(table, row_id)
                    finished = step(session, row)
                    renewed = self._renew(session, table, row_id, lease)
                    if renewed is None:  # rolls the batch back: it is another process's now
                        raise _LeaseLost
                    if finished:
                        row.lease_until = None
                        return 1
            except _LeaseLost:
                log.warning("%s %s: lost to another process", table.__tablename__, row_id)
                return 0
            lease = renewed

    def _send_newsletter(self, campaign_id: int) -> int:
        return self._run(
            Campaign,
            campaign_id,
            self._newsletter_due(),
            State.SENDING.value,
            self._newsletter_step,
        )

    def _newsletter_step(self, session: Session, campaign: Campaign) -> bool:
        """Queue the next batch of the audience; True when there is none left."""
        people = fanout.people_after(
            session,
            campaign.workspace_id,
            campaign.audience or {},
            campaign.fanout_cursor or 0,
            self.batch_size,
        )
        if not people:
            campaign.state = State.SENT.value
            campaign.sent_at = self.runtime.clock()
            log.info("newsletter %s: sent", campaign.id)
            return True
        composer = Composer.of(campaign, self.runtime)
        letters = fanout.newsletter_letters(session, composer, people)
        fanout.enqueue(session, self.runtime, campaign.workspace_id, letters)
        campaign.fanout_cursor = people[-1].id
        return False

    def _run_trigger(self, trigger_id: int) -> int:
        return self._run(
            BroadcastTrigger,
            trigger_id,
            self._trigger_due(),
            TriggerState.RUNNING.value,
            self._trigger_step,
        )

    def _trigger_step(self, session: Session, trigger: BroadcastTrigger) -> bool:
        """Check the recipients (first step) or queue one batch; True when the trigger is over."""
        campaign = session.get_one(Campaign, trigger.campaign_id)
        request = trigger.request
        if trigger.fanout_cursor is None:
            missing = fanout.missing_recipients(session, campaign.workspace_id, request)
            trigger.errors = [problem for problem, _ in missing][:MAX_ERRORS]
            trigger.counts = Tally(skipped=len(missing)).as_dict()
            trigger.fanout_cursor = 0
            if any(not ignored for _, ignored in missing):
                return self._finish(trigger, TriggerState.FAILED)
            return False
        batch = self._trigger_batch(session, campaign, request, trigger.fanout_cursor)
        if batch is None:
            return self._finish(trigger, TriggerState.DONE)
        tally = fanout.enqueue(session, self.runtime, campaign.workspace_id, batch.letters)
        total = Tally(**trigger.counts)
        total.add(tally)
        trigger.counts = total.as_dict()
        render_errors = [
            {"recipient": letter.person_id or letter.to_address, "error": letter.failed_because}
            for letter in batch.letters
            if letter is not None and letter.failed_because
        ]
        room = MAX_ERRORS - len(trigger.errors)
        if room > 0:
            trigger.errors = [*trigger.errors, *(batch.errors + render_errors)[:room]]
        trigger.fanout_cursor = batch.cursor
        return False

    def _finish(self, trigger: BroadcastTrigger, state: TriggerState) -> bool:
        trigger.state = state.value
        trigger.finished_at = self.runtime.clock()
        log.info("trigger %s: %s %s", trigger.id, state.value, trigger.counts)
        return True

    def _trigger_batch(
        self, session: Session, campaign: Campaign, request: dict[str, Any], cursor: int
    ) -> fanout.RecipientBatch | None:
        """The next batch of a trigger's recipients: its list of people if it has one, else
        the people matching its condition tree, else the broadcast's audience."""
        composer = Composer.of(campaign, self.runtime)
        if any(form in request for form in fanout.LIST_FORMS):
            return fanout.listed_recipients(session, composer, request, cursor, self.batch_size)
        audience = {"all": True} if "recipients" in request else campaign.audience
        people = fanout.people_after(
            session, campaign.workspace_id, audience or {"all": True}, cursor, self.batch_size
        )
        if not people:
            return None
        next_cursor = people[-1].id
        if "recipients" in request:
            people = self._matching(session, request["recipients"], people)
        variables = {"trigger": request.get("data", {})}
        letters: list[Letter | None] = [composer.letter(person, variables) for person in people]
        return fanout.RecipientBatch(letters, [], next_cursor)

    def _matching(
        self, session: Session, tree: dict[str, Any], people: list[fanout.Recipient]
    ) -> list[fanout.Recipient]:
        condition = parse(tree)
        now = self.runtime.clock()
        return [
            person for person in people if condition.holds(segments.facts_for(session, person, now))
        ]

    def _refresh_time_windows(self) -> None:
        now = self.runtime.clock()
        if self._refreshed_at is not None and now - self._refreshed_at < REFRESH_INTERVAL:
            return
        self._refreshed_at = now
        with self.database.session() as session:
            changed = segments.refresh_time_windows(session, self.runtime)
        if changed:
            log.info("time-window segments: %s memberships changed", changed)
