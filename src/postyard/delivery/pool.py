"""Reusable SMTP connections, at most `max_connections` open per server at once.

Opening a connection costs a TCP handshake, EHLO, often TLS and AUTH: several
round trips that a reused connection skips for every message after the first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import aiosmtplib

from postyard.delivery.endpoints import Endpoint

# Servers drop idle clients after a while (Postfix: 300 s); a connection idle
# this long is closed rather than risked on a message.
MAX_IDLE_SECONDS = 30.0


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


class ConnectionPool:
    def __init__(self, endpoint: Endpoint, local_hostname: str) -> None:
        self.endpoint = endpoint
        self._local_hostname = local_hostname
        self._slots = asyncio.Semaphore(endpoint.max_connections)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._in_use = 0
        self.last_used = time.monotonic()

    @property
    def is_idle(self) -> bool:
        return self._in_use == 0 and time.monotonic() - self.last_used > MAX_IDLE_SECONDS

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        """A connected, authenticated client; it returns to the pool unless it failed."""
        async with self._slots:
            self._in_use += 1
            try:
                client = self._reuse() or await self._open()
                try:
                    yield client
                except BaseException:
                    await close_client(client)
                    raise
                if client.is_connected:
                    self._idle.append((client, time.monotonic()))
            finally:
                self._in_use -= 1
                self.last_used = time.monotonic()

    def _reuse(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            client, idle_since = self._idle.pop()
            if client.is_connected and time.monotonic() - idle_since < MAX_IDLE_SECONDS:
                return client
            client.close()
        return None

    async def _open(self) -> aiosmtplib.SMTP:
        client = self.endpoint.client(self._local_hostname)
        try:
            await client.connect()
            if self.endpoint.username:
                await client.login(self.endpoint.username, self.endpoint.password or "")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            await close_client(client)
            raise ConnectionFailed(self.endpoint, error) from error
        return client

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(close_client(client) for client, _ in idle))


async def close_client(client: aiosmtplib.SMTP) -> None:
    """QUIT politely when the peer is still there; a failure to say goodbye changes nothing."""
    if client.is_connected:
        with suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit(timeout=5)
    client.close()


class Pools:
    """One pool per endpoint key; a pool nobody used for a while is closed."""

    def __init__(self, local_hostname: str) -> None:
        self._local_hostname = local_hostname
        self._pools: dict[str, ConnectionPool] = {}

    def for_endpoint(self, endpoint: Endpoint) -> ConnectionPool:
        pool = self._pools.get(endpoint.key)
        if pool is None:
            pool = self._pools[endpoint.key] = ConnectionPool(endpoint, self._local_hostname)
        return pool

    async def retire_idle(self) -> None:
        """Close pools of servers that were edited, deleted or simply left unused."""
        idle = [key for key, pool in self._pools.items() if pool.is_idle]
        await asyncio.gather(*(self._pools.pop(key).close() for key in idle))

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        await asyncio.gather(*(pool.close() for pool in pools.values()))
