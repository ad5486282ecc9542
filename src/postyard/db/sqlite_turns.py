"""SQLite writers take turns through a lock file instead of SQLite's busy handler.

SQLite lets one connection write at a time. One that finds the database locked sleeps and
looks again, in steps of 1, 2, 5, 10, 15, 20, 25 ... up to 100 ms, so it often wakes long
after the lock came free, and a writer that has waited long sleeps longest. With a
newsletter's fan-out and a delivery worker writing by turns, those sleeps came to more than
the writing: a 50,000-message send spent 7.4 s of its 17.5 s fan-out asleep waiting for the
lock (bench/README.md). Here every connection to the same file first takes an exclusive
`flock` on `<database>-writer`, just before its transaction's first write, and gives it back
as the transaction ends; a waiter looks again every half millisecond. SQLite's own lock and
busy handler stay underneath for writers that do not take part (the sqlite3 shell, say).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.pool import ConnectionPoolEntry

POLL_SECONDS = 0.0005
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
"""The statements before which the sqlite3 module begins a transaction: the first of them
in a transaction is where SQLite takes its write lock."""
_FD = "postyard_writer_fd"
_HELD = "postyard_writer_held"


def take_turns(engine: Engine, database_path: str, timeout: float) -> None:
    """Make `engine`'s connections to the SQLite file at `database_path` take turns to write;
    a connection that waits longer than `timeout` seconds fails as SQLite would, with
    "database is locked"."""
    lock_path = f"{database_path}-writer"

    @event.listens_for(engine, "connect")
    def open_lock_file(_dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        entry.info[_FD] = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        entry.info[_HELD] = False

    @event.listens_for(engine, "close")
    def close_lock_file(_dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        give_back(entry.info)
        descriptor = entry.info.pop(_FD, None)
        if descriptor is not None:
            os.close(descriptor)

    @event.listens_for(engine, "before_cursor_execute")
    def before_a_write(connection: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        info = connection.info
        if not info.get(_HELD) and statement.lstrip()[:7].upper().startswith(_WRITES):
            take(info, timeout)

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def as_the_transaction_ends(connection: Connection) -> None:
        give_back(connection.info)

    @event.listens_for(engine, "reset")
    def as_it_returns_to_the_pool(
        _dbapi_connection: Any, entry: ConnectionPoolEntry, _: Any
    ) -> None:
        give_back(entry.info)


def take(info: dict[Any, Any], timeout: float) -> None:
    descriptor = info[_FD]
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError("database is locked") from None
            time.sleep(POLL_SECONDS)
        else:
            info[_HELD] = True
            return


def give_back(info: dict[Any, Any]) -> None:
    if info.get(_HELD):
        info[_HELD] = False
        fcntl.flock(info[_FD], fcntl.LOCK_UN)
