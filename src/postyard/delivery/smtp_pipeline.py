"""Command pipelining (RFC 2920) on an SMTP connection that aiosmtplib has set up.

aiosmtplib reads one reply per command it writes: it drops data that arrives while no
command waits, so it cannot send MAIL, RCPT and DATA together and read the three replies
that come back at once. Once a session is ready (connected, TLS, AUTH, EHLO done by
aiosmtplib), `Pipeline` becomes the protocol of its transport: it writes a group of
commands in one write and reads their replies, with one timeout for the group. That halves
the round trips per message and skips aiosmtplib's per-command lock, timeout task and
parsing.

It raises what aiosmtplib raises for the same events (`SMTPServerDisconnected`,
`SMTPReadTimeoutError`, `SMTPResponseException` for a reply it cannot read) and, as
aiosmtplib does, closes the connection after a 421, a timeout or a garbled reply, after
which replies could no longer be matched to their commands.
"""

from __future__ import annotations

import asyncio
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH

__all__ = ["Pipeline"]

_INVALID_RESPONSE = -1
"""The code aiosmtplib gives a reply it cannot parse (`SMTPStatus.invalid_response`)."""

_SERVICE_NOT_AVAILABLE = 421
"""The server is closing the channel (RFC 5321 §3.8): aiosmtplib closes on it too."""

QUIT_TIMEOUT_SECONDS = 5.0
"""How long a goodbye may take; as `pool.close_client` allows aiosmtplib's QUIT."""


class Pipeline(asyncio.Protocol):
    """The protocol of a ready session's transport: writes command groups, reads replies."""

    def __init__(self, transport: asyncio.Transport, timeout: float | None) -> None:
        self._transport = transport
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._buffer = b""
        self._lines: list[bytes] = []
        """Text of the lines read so far of a multi-line reply (`250-...`)."""
        self._replies: list[aiosmtplib.SMTPResponse] = []
        self._owed = 0
        """Replies the server owes for commands written and not yet answered."""
        self._wanted = 0
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        """A 421 came: the server is closing the channel."""
        self._failure: aiosmtplib.SMTPException | None = None
        """Why the connection can carry nothing more; None while it can."""

    @classmethod
    def take_over(cls, client: aiosmtplib.SMTP) -> Pipeline:
        """Make the pipeline the protocol of `client`'s transport; from then on `client`
        serves only to close it. Call it between commands, when no reply is owed."""
        transport = client.transport
        if transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        pipeline = cls(cast(asyncio.Transport, transport), client.timeout)
        transport.set_protocol(pipeline)
        return pipeline

    @property
    def is_connected(self) -> bool:
        return self._failure is None and not self._transport.is_closing()

    async def exchange(
        self,
        commands: bytes,
        replies: int,
        timeout: float | None = None,
        *,
        then: int = 0,
    ) -> list[aiosmtplib.SMTPResponse]:
        """Write `commands` (whole lines, or message data) and return the `replies` replies
        they get, within the pipeline's timeout (or `timeout`) for all of them together.
        `then` more replies are owed to commands at the end of `commands` that someone
        else collects (`collect`): the next message's opening commands, written after this
        one's content.

        When the connection ends, times out or garbles a reply first, returns the replies
        read until then: the caller reads them in order and raises `failure()` where one
        it needs is missing, so a refusal that came before the connection ended is reported
        as the refusal (as aiosmtplib, which stops at the first refused command, would).
        Commands written while replies are still owed are never sent: those replies would
        answer them, so the connection is out of step and ends here."""
        if self._failure is None and self._owed:
            self._fail(aiosmtplib.SMTPServerDisconnected("Connection out of step: replies owed"))
        if self._failure is not None:
            return []
        self._transport.write(commands)
        self._owed += replies + then
        return await self.collect(replies, timeout)

    async def collect(
        self, replies: int, timeout: float | None = None
    ) -> list[aiosmtplib.SMTPResponse]:
        """The next `replies` replies to commands already written, as `exchange` returns
        them."""
        if len(self._replies) < replies and self._failure is None:
            await self._wait(replies, self._timeout if timeout is None else timeout)
        answered = self._replies[:replies]
        del self._replies[:replies]
        if self._closing:
            self._fail(aiosmtplib.SMTPServerDisconnected("Connection lost"))
        return answered

    def failure(self) -> aiosmtplib.SMTPException:
        """The error that ended the connection, to raise where a reply is missing."""
        return self._failure or aiosmtplib.SMTPServerDisconnected("Connection lost")

    async def quit(self) -> None:
        """QUIT when the connection is in step (no reply owed), then close it; a failure
        to say goodbye changes nothing."""
        if self.is_connected and self._owed == 0:
            await self.exchange(b"QUIT\r\n", 1, QUIT_TIMEOUT_SECONDS)
        self.close()

    def close(self) -> None:
        if not self._transport.is_closing():
            self._transport.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _wait(self, replies: int, timeout: float | None) -> None:
        """Until `replies` replies are in, or the connection can carry nothing more."""
        waiter = self._waiter = self._loop.create_future()
        self._wanted = replies
        if timeout is not None:
            self._set_deadline(self._loop.time() + timeout)
        try:
            await waiter
        except BaseException:
            # Cancelled: the replies owed would answer the next commands.
            self._fail(aiosmtplib.SMTPServerDisconnected("Connection lost"))
            raise
        finally:
            self._waiter = None

    def _set_deadline(self, deadline: float) -> None:
        """One timer per connection, moved on lazily: arming and cancelling a timer for
        every wait cost more than the rest of a wait. A timer that fires before the
        deadline (moved on since) sets itself again; one that fires while nothing waits
        lapses until the next wait."""
        self._deadline = deadline
        timer = self._timer
        if timer is not None and timer.when() > deadline:
            timer.cancel()
            timer = None
        if timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._fail(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))

    def _fail(self, error: aiosmtplib.SMTPException) -> None:
        """Stop here: a later reply could not be told from the one given up on."""
        if self._failure is None:
            self._failure = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        start = 0
        end = data.find(b"\n")
        while end >= 0:
            if end + 1 - start > MAX_LINE_LENGTH:
                self._garbled("Response too long")
                return
            if not self._read_line(data[start : end + 1]):
                return
            start = end + 1
            end = data.find(b"\n", start)
        if start < len(data):
            self._buffer = data[start:]
        if (self._buffer or self._lines) and (
            len(self._buffer) + sum(map(len, self._lines)) > MAX_RESPONSE_LENGTH
        ):
            self._garbled("Response too long")
        elif self._waiter is not None and len(self._replies) >= self._wanted:
            self._wake()

    def _read_line(self, line: bytes) -> bool:
        """Take one reply line; False when it cannot be a reply line."""
        try:
            code = int(line[:3])
        except ValueError:
            text = line.decode("utf-8", errors="ignore")
            self._garbled(f"Malformed SMTP response line: {text}")
            return False
        text = line[4:].strip(b" \t\r\n")
        if line[3:4] == b"-":
            self._lines.append(text)
            return True
        if self._lines:
            self._lines.append(text)
            text = b"\n".join(self._lines)
            self._lines = []
        if code == _SERVICE_NOT_AVAILABLE:
            self._closing = True
        if self._owed:  # else unsolicited: dropped, as aiosmtplib does
            self._owed -= 1
            self._replies.append(
                aiosmtplib.SMTPResponse(code, text.decode("utf-8", "surrogateescape"))
            )
        return True

    def _garbled(self, message: str) -> None:
        self._buffer = b""
        self._lines = []
        self._fail(aiosmtplib.SMTPResponseException(_INVALID_RESPONSE, message))

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        error = aiosmtplib.SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._fail(error)
