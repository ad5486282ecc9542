"""Per-server limits that hold across every worker process sharing one database.

A process-local semaphore cannot stop four `postyard worker` processes from opening four
times `max_connections`, nor keep them together under a server's rate. Both limits are
therefore kept in the database, with as few round trips as the limit allows:

* Connections: a server has `max_connections` slot rows. Opening a connection first leases
  a free slot (one UPDATE, `FOR UPDATE SKIP LOCKED` so that workers never queue on each
  other's row locks), closing it frees the slot. Leases are renewed every few seconds for
  all of a process's slots in one statement; a worker that dies leaves slots that others
  take once they expire. A round trip per connection, none per message.
* Rate: a server's pacing row holds the next free send time. A process reserves a chunk of
  `n` consecutive send times in one UPDATE (`next_free_at = max(next_free_at, now) + n/rate`)
  and sends each message no earlier than its reserved time, so all processes together stay
  under the rate. A chunk spans about `PACING_SPAN_SECONDS`, and never more turns than the
  messages waiting, so a high rate costs a few round trips a second, not one per message.

On SQLite (one machine, usually one process) the same statements work: SQLite lets one
writer at a time, which serialises the leases just as well.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from postyard.clock import utcnow
from postyard.db.engine import Database
from postyard.db.models import ServerSlot, ServerThrottle

log = logging.getLogger(__name__)

SLOT_LEASE_SECONDS = 15.0
"""How long a slot stays taken without renewal: how long a dead worker's slots stay lost."""

SLOT_RENEW_SECONDS = 5.0

PACING_SPAN_SECONDS = 0.1
"""How much of a server's send time one reservation covers at most; also how far the
pacing may fall behind and catch up (a burst of at most this much of a second's rate), so
that a short stall (a reconnection, a slot changing hands) does not cost the rate."""

WANTED_SECONDS = 1.0
"""How long a failed attempt to lease a slot counts as a worker waiting for one."""

WANTED_REFRESH = timedelta(seconds=WANTED_SECONDS / 2)

STALE_TURN_SECONDS = 1.0
"""A reserved send time this far in the past is dropped rather than used in a burst."""


class Throttle:
    """This process's side of the shared limits; one per worker, used on its event loop."""

    def __init__(self, database: Database, owner: str) -> None:
        self.database = database
        self.owner = owner
        self._held: set[tuple[int, int]] = set()
        self._laid: set[tuple[int, int]] = set()
        """(server, limit) pairs whose slot rows this process knows exist."""
        self._pacers: dict[int, Pacer] = {}
        self._marked: dict[int, datetime] = {}
        """When this process last marked each server wanted: one write per while, not per poll."""
        self._renewal: asyncio.Task[None] | None = None

    def holds(self, server_id: int, slot: int) -> bool:
        """Whether the slot is still this process's: False once a renewal found it taken."""
        return (server_id, slot) in self._held

    async def try_slot(self, server_id: int, limit: int) -> int | None:
        """Lease one of the server's `limit` connection slots; None when all are taken."""
        slot = await asyncio.to_thread(self._take, server_id, limit)
        if slot is not None:
            self._held.add((server_id, slot))
            if self._renewal is None or self._renewal.done():
                self._renewal = asyncio.create_task(self._renew_while_held())
        return slot

    async def release_slot(self, server_id: int, slot: int) -> None:
        self._held.discard((server_id, slot))
        await asyncio.to_thread(self._free, server_id, slot)

    def pacer(self, server_id: int) -> Pacer:
        pacer = self._pacers.get(server_id)
        if pacer is None:
            pacer = self._pacers[server_id] = Pacer(self, server_id)
        return pacer

    async def close(self) -> None:
        """Give back every slot this process holds; a stopping worker leaves none to expire."""
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        self._held.clear()
        await asyncio.to_thread(self._free_all)

    async def _renew_while_held(self) -> None:
        while self._held:
            await asyncio.sleep(SLOT_RENEW_SECONDS)
            held = set(self._held)
            try:
                renewed = await asyncio.to_thread(self._renew, held)
            except Exception:  # the database failed: the leases still run for a while
                log.exception("renewing SMTP connection slots failed")
                continue
            # Slots released meanwhile are no loss; a slot taken by a lease attempt that was
            # cancelled before it could record it is never renewed, and simply expires.
            lost = (held - renewed) & self._held
            if lost:
                log.warning("%s SMTP connection slot(s) expired before renewal", len(lost))
                self._held -= lost

    # Database work, run in a thread.

    def _take(self, server_id: int, limit: int) -> int | None:
        now = utcnow()
        with self.database.session() as session:
            if (server_id, limit) not in self._laid:
                session.execute(
                    _insert(session, ServerSlot).on_conflict_do_nothing(),
                    [{"server_id": server_id, "slot": n} for n in range(limit)],
                )
            free = (
                select(ServerSlot.slot)
                .where(
                    ServerSlot.server_id == server_id,
                    ServerSlot.slot < limit,
                    or_(ServerSlot.owner.is_(None), ServerSlot.expires_at < now),
                )
                .order_by(ServerSlot.slot)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            slot = session.scalar(
                update(ServerSlot)
                .where(
                    ServerSlot.server_id == server_id, ServerSlot.slot.in_(free.scalar_subquery())
                )
                .values(owner=self.owner, expires_at=now + timedelta(seconds=SLOT_LEASE_SECONDS))
                .returning(ServerSlot.slot)
            )
            marked = self._marked.get(server_id)
            if slot is None and (marked is None or now - marked > WANTED_REFRESH):
                _update_or_insert(session, server_id, wanted_at=now)
                self._marked[server_id] = now
        self._laid.add((server_id, limit))
        return slot

    def wanted(self, server_ids: set[int]) -> set[int]:
        """Which of these servers another worker is waiting for a slot of (blocking)."""
        since = utcnow() - timedelta(seconds=WANTED_SECONDS)
        with self.database.session() as session:
            rows = session.scalars(
                select(ServerThrottle.server_id).where(
                    ServerThrottle.server_id.in_(server_ids), ServerThrottle.wanted_at >= since
                )
            )
            return set(rows)

    def _free(self, server_id: int, slot: int) -> None:
        with self.database.session() as session:
            session.execute(
                update(ServerSlot)
                .where(
                    ServerSlot.server_id == server_id,
                    ServerSlot.slot == slot,
                    ServerSlot.owner == self.owner,
                )
                .values(owner=None, expires_at=None)
            )

    def _free_all(self) -> None:
        with self.database.session() as session:
            session.execute(
                update(ServerSlot)
                .where(ServerSlot.owner == self.owner)
                .values(owner=None, expires_at=None)
            )

    def _renew(self, held: set[tuple[int, int]]) -> set[tuple[int, int]]:
        expires_at = utcnow() + timedelta(seconds=SLOT_LEASE_SECONDS)
        with self.database.session() as session:
            rows = session.execute(
                update(ServerSlot)
                .where(
                    ServerSlot.owner == self.owner,
                    tuple_(ServerSlot.server_id, ServerSlot.slot).in_(list(held)),
                )
                .values(expires_at=expires_at)
                .returning(ServerSlot.server_id, ServerSlot.slot)
            )
            return {(server_id, slot) for server_id, slot in rows}

    def reserve_turns(self, server_id: int, rate: float, count: int) -> float:
        """Reserve `count` send times (blocking: run it in a thread); returns the first,
        the others follow at 1/rate."""
        step = count / rate
        now = time.time()
        with self.database.session() as session:
            end = _update_or_insert(
                session,
                server_id,
                next_free_at=case(
                    (
                        ServerThrottle.next_free_at > now - PACING_SPAN_SECONDS,
                        ServerThrottle.next_free_at,
                    ),
                    else_=now - PACING_SPAN_SECONDS,
                )
                + step,
            )
        return end - step


class Pacer:
    """This process's share of one server's rate: reserved send times, used in order."""

    def __init__(self, throttle: Throttle, server_id: int) -> None:
        self._throttle = throttle
        self._server_id = server_id
        self._turns: deque[float] = deque()
        self._reserving = asyncio.Lock()

    async def wait_turn(self, rate: float, waiting: int) -> None:
        """Return at this message's send time; `waiting` (messages queued for the server in
        this process) caps a reservation, so that turns are not reserved to go unused."""
        turn = await self._next_turn(rate, waiting)
        delay = turn - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _next_turn(self, rate: float, waiting: int) -> float:
        while True:
            if self._turns:
                turn = self._turns.popleft()
                if turn > time.time() - STALE_TURN_SECONDS:
                    return turn
                continue
            async with self._reserving:
                if self._turns:  # another message reserved while this one waited
                    continue
                count = max(1, min(math.ceil(rate * PACING_SPAN_SECONDS), waiting))
                first = await asyncio.to_thread(
                    self._throttle.reserve_turns, self._server_id, rate, count
                )
                self._turns.extend(first + n / rate for n in range(count))


def _insert(session: Session, model: type[ServerSlot | ServerThrottle]) -> Any:
    """An INSERT that can skip rows another worker inserted first (ON CONFLICT DO NOTHING)."""
    dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    return dialect.insert(model)


def _update_or_insert(session: Session, server_id: int, **values: Any) -> float:
    """Update the server's throttle row, creating it first if need be; returns the row's
    `next_free_at` (0 when unset). One row per statement: no lock-order deadlocks."""
    advance = (
        update(ServerThrottle)
        .where(ServerThrottle.server_id == server_id)
        .values(**values)
        .returning(func.coalesce(ServerThrottle.next_free_at, 0.0))
    )
    found = session.scalar(advance)
    if found is None:
        session.execute(
            _insert(session, ServerThrottle).values(server_id=server_id).on_conflict_do_nothing()
        )
        found = session.scalar(advance)
    assert found is not None
    return float(found)
