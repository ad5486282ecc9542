"""SQLite writers take turns through `<database>-writer`: a transaction holds the turn from
its first write until it ends, however it ends, and a reader never takes it. A process that
does not give the turn back in time makes the waiting writer fail as SQLite would."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Update, create_engine, select, update
from sqlalchemy.exc import OperationalError

from postyard.db.engine import Database
from postyard.db.models import Workspace
from postyard.db.sqlite_turns import take_turns
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace


@pytest.fixture
def sqlite_file(tmp_path: Path, sqlite_template: Path) -> Path:
    path = tmp_path / "postyard.db"
    shutil.copy(sqlite_template, path)
    return path


@pytest.fixture
def database(sqlite_file: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{sqlite_file}")
    with database.session() as session:
        create_workspace(session, "Acme", Plan.PREMIUM)
    yield database
    database.dispose()


def turn_is_free(sqlite_file: Path) -> bool:
    """Whether another process could take the writers' turn now."""
    descriptor = os.open(f"{sqlite_file}-writer", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return True
    finally:
        os.close(descriptor)


def rename_workspace(name: str) -> Update:
    return update(Workspace).values(name=name).execution_options(synchronize_session=False)


def test_a_write_holds_the_turn_until_its_transaction_commits(
    database: Database, sqlite_file: Path
) -> None:
    with database.session() as session:
        session.execute(select(Workspace.id)).all()
        assert turn_is_free(sqlite_file)  # reading takes no turn
        session.execute(rename_workspace("Acme Ltd"))
        assert not turn_is_free(sqlite_file)
    assert turn_is_free(sqlite_file)
    with database.session() as session:
        assert session.scalar(select(Workspace.name)) == "Acme Ltd"


def test_a_transaction_that_fails_gives_the_turn_back(
    database: Database, sqlite_file: Path
) -> None:
    with pytest.raises(RuntimeError), database.session() as session:
        session.execute(rename_workspace("Never"))
        assert not turn_is_free(sqlite_file)
        raise RuntimeError("the batch failed")
    assert turn_is_free(sqlite_file)
    with database.session() as session:
        assert session.scalar(select(Workspace.name)) == "Acme"


def test_a_writer_kept_waiting_past_its_timeout_fails_as_sqlite_would(
    database: Database, sqlite_file: Path
) -> None:
    impatient = create_engine(f"sqlite:///{sqlite_file}")
    take_turns(impatient, str(sqlite_file), timeout=0.2)
    try:
        with database.session() as session:
            session.execute(rename_workspace("Held"))
            with (
                pytest.raises(OperationalError, match="database is locked"),
                impatient.begin() as connection,
            ):
                connection.execute(rename_workspace("Impatient"))
        with impatient.begin() as connection:  # its turn comes once the holder commits
            connection.execute(rename_workspace("Next"))
    finally:
        impatient.dispose()
    with database.session() as session:
        assert session.scalar(select(Workspace.name)) == "Next"
