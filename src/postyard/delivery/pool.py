"""Reusable SMTP connections, within the server's limits across all workers.

Opening a connection costs a TCP handshake, EHLO, often TLS and AUTH: several
round trips that a reused connection skips for every message after the first.

A configured server's limits hold across every worker process (see `throttle`): each
connection leases one of its `max_connections` slots, each message waits for its turn
under `rate_limit_per_second`, and a connection says QUIT after
`max_messages_per_connection` messages. Within one process, at most `max_connections`
messages hold a turn at once, so that it never polls for more slots than the server has. With
no rate and no per-connection limit, the only cost per message is a counter: slots are leased
per connection, not per message.

A message that finishes hands its turn, and its connection when that goes on, straight to the
first message waiting for one: a busy pool passes each connection from message to message
without putting it in the idle list, checking it again or waking anyone else.

On a busy pipelined connection that message is known before the one on it has finished:
while a message writes its content, it takes the first waiting message as the connection's
next (`Session.next_in_line`) and writes that message's opening commands (MAIL, RCPT, DATA)
after its final dot, as RFC 2920 allows. Each message then costs one write and one round
trip instead of two, for the client and the server alike. The next message gets the turn
and the connection together, with its replies owed (`Session.opened_ahead`). Should the
connection not go on (lost, refused the session, carried its share, or the next message was
cancelled meanwhile), it is closed, which ends that half-opened transaction unsent, and the
next message takes its turn at the head of the line without it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import NamedTuple

import aiosmtplib

from postyard.delivery.endpoints import Endpoint
from postyard.delivery.smtp_pipeline import Pipeline
from postyard.delivery.throttle import Pacer, Throttle

# Servers drop idle clients after a while (Postfix: 300 s); a connection idle
# this long is closed rather than risked on a message.
MAX_IDLE_SECONDS = 30.0

SLOT_IDLE_SECONDS = 2.0
"""A connection idle this long gives its slot back; at once when another worker waits."""

HAND_OVER_POLL_SECONDS = 0.1
"""How often a pool holding idle slots looks whether another worker waits for one."""

SLOT_POLL_SECONDS = (0.05, 0.25)
"""First and longest wait between attempts to lease a slot when all are taken."""


class ConnectionFailed(Exception):
    """No session could be set up: refused, timed out, TLS not verified, AUTH rejected.

    Whatever the reply code, this says nothing about the message, so the
    message is deferred rather than failed.
    """

    def __init__(self, endpoint: Endpoint, error: BaseException) -> None:
        super().__init__(
            f"cannot connect to {endpoint.name} ({endpoint.host}:{endpoint.port}): "
            f"{describe_error(error)}"
        )
        self.code = getattr(error, "code", None)


def describe_error(error: BaseException) -> str:
    return str(error) or type(error).__name__


class Opening(NamedTuple):
    """What opens a message's transaction: its envelope addresses as MAIL FROM and RCPT TO
    carry them, and its size. A message waiting for a connection brings it, so that the
    message before it can write the commands ahead (see the module's docstring)."""

    mail_from: bytes
    rcpt_to: bytes
    size: int


def _no_one() -> Opening | None:
    return None


@dataclass(eq=False)
class Session:
    """What the pool lends: aiosmtplib's client, which set the session up (connect, TLS,
    AUTH), and the `Pipeline` that carries its mail once the server is found to offer
    PIPELINING (see `transaction.send`); from then on the client only closes it."""

    client: aiosmtplib.SMTP
    pipeline: Pipeline | None = None
    opened_ahead: bool = False
    """The message before this one wrote this one's opening commands after its content:
    their replies are owed to this one, which must collect them and write none of its own."""
    next_in_line: Callable[[], Opening | None] = _no_one
    """Called as a message writes its content: the opening of the message that takes the
    connection next, now bound to it, or None when none can."""

    @property
    def is_connected(self) -> bool:
        if self.pipeline is not None:
            return self.pipeline.is_connected
        return self.client.is_connected


@dataclass(eq=False)
class _Connection:
    session: Session
    slot: int | None
    """The server's connection slot it holds; None for the default relay (no shared limit)."""
    messages: int = 0
    idle_since: float = 0.0
    successor: _Turn | None = None
    """The message whose opening went ahead on this connection, which gets it next."""


@dataclass(eq=False)
class _Turn:
    """A message waiting for a turn, and for the connection that may come with it."""

    future: asyncio.Future[_Connection | None]
    opening: Opening | None


class ConnectionPool:
    def __init__(
        self, endpoint: Endpoint, local_hostname: str, throttle: Throttle | None = None
    ) -> None:
        self.endpoint = endpoint
        self._local_hostname = local_hostname
        self._idle: list[_Connection] = []
        self._in_use = 0
        """Messages holding a turn: at most `max_connections`."""
        self._turns: deque[_Turn] = deque()
        """Messages waiting for a turn, first come first served; each gets the turn of a
        message that finished, with that message's connection when it goes on."""
        self._waiting = 0
        """Messages for this server in this process: waiting for a turn or holding one."""
        self._polling = False
        self._returned: asyncio.Future[None] | None = None
        """Resolved when a connection goes back to `_idle` or frees its slot, for the
        messages of this pool waiting for a slot."""
        self.last_used = time.monotonic()
        self._hand_over: asyncio.Task[None] | None = None
        """The latest check whether another worker wants this pool's idle slots."""
        server_id = endpoint.server_id
        self._throttle = throttle if server_id is not None else None
        self._pacer: Pacer | None = None
        if throttle is not None and server_id is not None and endpoint.rate_limit_per_second:
            self._pacer = throttle.pacer(server_id)

    @property
    def is_idle(self) -> bool:
        return self._in_use == 0 and time.monotonic() - self.last_used > MAX_IDLE_SECONDS

    def connection(self, opening: Opening | None = None) -> Lease:
        """A connected, authenticated session, at this message's turn under the server's rate;
        it returns to the pool unless it failed or has carried its share of messages. With
        the message's `opening`, the message before it may write that ahead."""
        return Lease(self, opening)

    async def lend(self, opening: Opening | None = None) -> _Connection:
        """Wait for a turn, then for a connection and the message's send time."""
        self._waiting += 1
        try:
            connection = await self._turn(opening)
        except BaseException:
            self._done_waiting()
            raise
        try:
            if connection is None:
                connection = await self._acquire()
            if self._pacer is not None:
                rate = self.endpoint.rate_limit_per_second or 0.0
                await self._pacer.wait_turn(rate, self._waiting)
        except BaseException:
            try:
                if connection is not None:
                    await self._close(connection)
            finally:
                self._pass_turn(None)
                self._done_waiting()
            raise
        return connection

    async def take_back(self, connection: _Connection, error: BaseException | None) -> None:
        """End a message's turn: the connection goes on after the message was sent, or was
        refused by a server that went on with the session (after the RSET the connection
        carries the next message), unless it has carried its share; else it is closed."""
        kept = None
        successor, connection.successor = connection.successor, None
        try:
            if error is None or (isinstance(error, REFUSALS) and not _refused_the_session(error)):
                connection.messages += 1
                if self._keeps(connection) and (successor is None or not successor.future.done()):
                    kept = connection
            if kept is None:
                await self._close(connection)
        finally:
            if successor is None:
                self._pass_turn(kept)
            elif kept is not None:  # its opening is on this connection: both are its own
                kept.session.opened_ahead = True
                successor.future.set_result(kept)
            else:  # first in line all the same, without a connection
                self._turns.appendleft(successor)
                self._pass_turn(None)
            self._done_waiting()

    def _next_in_line(self, connection: _Connection) -> Opening | None:
        """The first waiting message, bound to follow on `connection` (see the module's
        docstring); None when it cannot: the server's rate paces each message, the
        connection is about to carry its share, or messages that hold a turn wait for a
        connection (they get the next one that comes back)."""
        limit = self.endpoint.max_messages_per_connection
        if (
            self._pacer is not None
            or self._returned is not None
            or (limit is not None and connection.messages + 2 > limit)
        ):
            return None
        turns = self._turns
        while turns and turns[0].future.done():  # cancelled while waiting
            turns.popleft()
        if not turns or turns[0].opening is None:
            return None
        connection.successor = turns.popleft()
        return connection.successor.opening

    async def _turn(self, opening: Opening | None) -> _Connection | None:
        """Wait for a turn; returns the connection that came with it, if one did."""
        if self._in_use < self.endpoint.max_connections and not self._turns:
            self._in_use += 1
            return None
        turn = _Turn(asyncio.get_running_loop().create_future(), opening)
        self._turns.append(turn)
        try:
            return await turn.future
        except BaseException:
            if turn.future.cancelled():
                with suppress(ValueError):  # taken off the line already
                    self._turns.remove(turn)
            else:  # the turn came just as the wait was cancelled: pass it on
                await self._pass_turn_on(turn.future.result())
            raise

    async def _pass_turn_on(self, connection: _Connection | None) -> None:
        """Pass on a turn that came too late; a connection that holds this message's opening
        is closed, for it must not carry another message's content."""
        try:
            if connection is not None and connection.session.opened_ahead:
                await self._close(connection)
                connection = None
        finally:
            self._pass_turn(connection)

    def _pass_turn(self, connection: _Connection | None) -> None:
        """Give a finished message's turn to the first message waiting for one, with its
        connection when it goes on; messages that hold a turn but wait for a connection
        (every slot taken) take that connection first, as they waited longer."""
        if connection is not None and self._returned is not None:
            self._idle_again(connection)
            connection = None
        while self._turns:
            turn = self._turns.popleft()
            if not turn.future.done():
                turn.future.set_result(connection)
                return
        self._in_use -= 1
        self.last_used = time.monotonic()
        if connection is not None:
            self._idle_again(connection)

    def _done_waiting(self) -> None:
        self._waiting -= 1
        if self._waiting == 0 and self.holds_idle_slots and self._hand_over is None:
            self._hand_over = asyncio.create_task(self._hand_over_idle_slots())

    async def _hand_over_idle_slots(self) -> None:
        """While this process has no message for the server, give its idle connections'
        slots back: at once when another worker waits for one, else after a short while.

        Watched from the moment the pool runs out of messages, not at the end of the batch:
        two workers each holding one server's slots while waiting for the other's would
        otherwise wait on each other until their leases ran out."""
        assert self._throttle is not None
        deadline = time.monotonic() + SLOT_IDLE_SECONDS
        try:
            while self._waiting == 0 and self.holds_idle_slots:
                wanted = await asyncio.to_thread(self._throttle.wanted, {self._server_id})
                if self._waiting:
                    return
                if wanted or time.monotonic() >= deadline:
                    await self.release_idle(0)
                    return
                await asyncio.sleep(HAND_OVER_POLL_SECONDS)
        finally:
            self._hand_over = None

    def _idle_again(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        self._wake()

    def _keeps(self, connection: _Connection) -> bool:
        limit = self.endpoint.max_messages_per_connection
        return (
            connection.session.is_connected
            and (limit is None or connection.messages < limit)
            and (
                connection.slot is None
                or self._throttle is None
                or self._throttle.holds(self._server_id, connection.slot)
            )
        )

    @property
    def _server_id(self) -> int:
        assert self.endpoint.server_id is not None
        return self.endpoint.server_id

    async def _reuse(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            fresh = time.monotonic() - connection.idle_since < MAX_IDLE_SECONDS
            if fresh and self._keeps(connection):
                return connection
            await self._close(connection)
        return None

    async def _acquire(self) -> _Connection:
        """An idle connection, else a new one in a free slot. While every slot is taken, one
        message at a time polls for a slot, and any takes a connection of this pool as soon
        as one comes back."""
        wait = SLOT_POLL_SECONDS[0]
        while True:
            connection = await self._reuse()
            if connection is not None:
                return connection
            if self._throttle is None:
                return await self._open(None)
            if not self._polling:
                self._polling = True
                try:
                    slot = await self._throttle.try_slot(
                        self._server_id, self.endpoint.max_connections
                    )
                finally:
                    self._polling = False
                if slot is not None:
                    self._wake()  # there may be more free slots: let the next one look
                    return await self._open(slot)
            if self._returned is None:
                self._returned = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._returned}, timeout=wait * random.uniform(0.5, 1.0))
            wait = min(wait * 2, SLOT_POLL_SECONDS[1])

    async def _open(self, slot: int | None) -> _Connection:
        client = self.endpoint.client(self._local_hostname)
        try:
            await self.endpoint.connect(client)
            if self.endpoint.username:
                await client.login(self.endpoint.username, self.endpoint.password or "")
        except BaseException as error:
            await self._close(_Connection(Session(client), slot))
            if isinstance(error, aiosmtplib.SMTPException | OSError | TimeoutError):
                raise ConnectionFailed(self.endpoint, error) from error
            raise
        connection = _Connection(Session(client), slot)
        connection.session.next_in_line = partial(self._next_in_line, connection)
        return connection

    async def _close(self, connection: _Connection) -> None:
        """QUIT, then give the slot back: the server counts the connection until it is gone."""
        await close_session(connection.session)
        if connection.slot is not None and self._throttle is not None:
            await self._throttle.release_slot(self._server_id, connection.slot)
            self._wake()

    def _wake(self) -> None:
        if self._returned is not None:
            self._returned.set_result(None)
            self._returned = None

    @property
    def holds_idle_slots(self) -> bool:
        return any(connection.slot is not None for connection in self._idle)

    async def release_idle(self, older_than: float) -> None:
        """Close the connections idle for `older_than` seconds, freeing their slots."""
        now = time.monotonic()
        stale = [c for c in self._idle if now - c.idle_since >= older_than]
        if stale:
            self._idle = [c for c in self._idle if c not in stale]
            await asyncio.gather(*(self._close(c) for c in stale))

    async def close(self) -> None:
        if self._hand_over is not None:
            self._hand_over.cancel()
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._close(connection) for connection in idle))


REFUSALS = (aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPResponseException)
"""What a server answers about one message; the session may well go on."""


def _refused_the_session(
    error: aiosmtplib.SMTPRecipientsRefused | aiosmtplib.SMTPResponseException,
) -> bool:
    """A 421 (the server is closing the session) or a reply that is not SMTP at all."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        codes = [refusal.code for refusal in error.recipients]
    else:
        codes = [error.code]
    return any(code == 421 or not 400 <= code < 600 for code in codes)


async def close_session(session: Session) -> None:
    """QUIT over whichever of the client or the pipeline holds the connection now."""
    if session.pipeline is None:
        await close_client(session.client)
    else:
        await session.pipeline.quit()
        session.client.close()


async def close_client(client: aiosmtplib.SMTP) -> None:
    """QUIT politely when the peer is still there; a failure to say goodbye changes nothing."""
    if client.is_connected:
        with suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit(timeout=5)
    client.close()


class Lease:
    """`ConnectionPool.connection()`: a class rather than a generator-based context manager,
    which cost more per message than the rest of taking a connection from a busy pool."""

    __slots__ = ("_connection", "_opening", "_pool")

    def __init__(self, pool: ConnectionPool, opening: Opening | None) -> None:
        self._pool = pool
        self._opening = opening
        self._connection: _Connection | None = None

    async def __aenter__(self) -> Session:
        self._connection = await self._pool.lend(self._opening)
        return self._connection.session

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._connection is not None
        await self._pool.take_back(self._connection, error)


class Pools:
    """One pool per endpoint key; a pool nobody used for a while is closed."""

    def __init__(self, local_hostname: str, throttle: Throttle | None = None) -> None:
        self._local_hostname = local_hostname
        self._throttle = throttle
        self._pools: dict[str, ConnectionPool] = {}

    def for_endpoint(self, endpoint: Endpoint) -> ConnectionPool:
        pool = self._pools.get(endpoint.key)
        if pool is None:
            pool = self._pools[endpoint.key] = ConnectionPool(
                endpoint, self._local_hostname, self._throttle
            )
        return pool

    async def retire_idle(self) -> None:
        """Close pools of servers that were edited, deleted or simply left unused."""
        idle = [key for key, pool in self._pools.items() if pool.is_idle]
        await asyncio.gather(*(self._pools.pop(key).close() for key in idle))

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        await asyncio.gather(*(pool.close() for pool in pools.values()))
        if self._throttle is not None:
            await self._throttle.close()
