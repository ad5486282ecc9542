"""An SMTP server that records what the limits tests assert on: when each message arrived,
over which connection, and how many connections were open at once.

A connection counts as open from the moment it is accepted until its QUIT (or, without
one, until it is lost): the client frees its slot only after QUIT is answered, so a
connection is never still counted when another worker may rightly open the next one.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from postyard.localsmtp import free_port

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Arrival:
    at: float
    """time.monotonic() when DATA was accepted."""
    connection: int
    message_id: str


class _Log:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.connections = 0
        self.open = 0
        self.most_open = 0

    def opened(self) -> int:
        with self.lock:
            self.connections += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            return self.connections

    def ended(self) -> None:
        with self.lock:
            self.open -= 1


class _RecordingSMTP(SMTP):
    def __init__(self, log: _Log, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log
        self.connection_number = 0
        self.ended = False

    def connection_made(self, transport: Any) -> None:
        self.connection_number = self.log.opened()
        super().connection_made(transport)

    async def smtp_QUIT(self, arg: str) -> None:
        self._end()
        await super().smtp_QUIT(arg)

    def connection_lost(self, error: Exception | None) -> None:
        self._end()
        super().connection_lost(error)

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.log.ended()


class RecordingSMTPServer:
    """Accepts every message; `arrivals`, `connections`, `most_open` say how they came."""

    def __init__(self) -> None:
        self.port = free_port()
        self._log = _Log()
        log = self._log

        class _Controller(Controller):
            def factory(self) -> SMTP:
                return _RecordingSMTP(log, self.handler, **self.SMTP_kwargs)

        self._controller = _Controller(
            self, hostname="127.0.0.1", port=self.port, server_hostname="recording.invalid"
        )

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _RecordingSMTP)
        found = MESSAGE_ID.search(envelope.original_content or b"")
        arrival = Arrival(
            time.monotonic(), server.connection_number, found[1].decode() if found else ""
        )
        with self._log.lock:
            self._log.arrivals.append(arrival)
        return "250 OK"

    @property
    def arrivals(self) -> list[Arrival]:
        with self._log.lock:
            return list(self._log.arrivals)

    @property
    def connections(self) -> int:
        with self._log.lock:
            return self._log.connections

    @property
    def most_open(self) -> int:
        """The most connections open at the same moment."""
        with self._log.lock:
            return self._log.most_open

    def messages_per_connection(self) -> Counter[int]:
        return Counter(arrival.connection for arrival in self.arrivals)

    def __enter__(self) -> RecordingSMTPServer:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._controller.stop()


def observed_rate(arrivals: list[Arrival]) -> float:
    """Messages per second between the first arrival and the last."""
    times = sorted(arrival.at for arrival in arrivals)
    return (len(times) - 1) / (times[-1] - times[0])


def busiest_second(arrivals: list[Arrival]) -> int:
    """The most arrivals in any one-second window."""
    times = sorted(arrival.at for arrival in arrivals)
    most, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most
