"""Shared fixtures: real databases (SQLite and PostgreSQL), the app, workspaces, TLS material.

Every test that takes `database_url` (directly or through `settings`, `database`,
`api` ...) runs once on SQLite and once on PostgreSQL. A missing part (the
PostgreSQL server, `smtp-sink`) skips the test with the reason, or fails it when
POSTYARD_REQUIRE_ALL=1, as CI sets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import trustme
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from smtp_sink import SmtpSink, start_smtp_sink
from sqlalchemy import make_url

from postyard.api.app import create_app
from postyard.clock import Clock, utcnow
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.migrate import upgrade
from postyard.db.models import Base
from postyard.delivery.worker import Worker
from postyard.localsmtp import free_port
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

REQUIRE_ALL = os.environ.get("POSTYARD_REQUIRE_ALL") == "1"
POSTGRES_URL = os.environ.get(
    "POSTYARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SECRET_KEY = Fernet.generate_key().decode()


def need(reason: str) -> None:
    """Skip for want of a part, or fail where every part must be present (CI)."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason}; POSTYARD_REQUIRE_ALL=1 requires it")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated database file, copied for each test: migrating each time is slower."""
    path = tmp_path_factory.mktemp("template") / "postyard.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of this test run's own on the PostgreSQL server, migrated once."""
    admin = make_url(POSTGRES_URL)
    name = f"postyard_test_{uuid.uuid4().hex[:12]}"
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        need(f"PostgreSQL is not reachable at {admin.host}:{admin.port} ({error})")
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = admin.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "postyard.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    return emptied(request.getfixturevalue("postgres_database"))


def emptied(url: str) -> str:
    """The shared PostgreSQL database with every table emptied: what earlier tests left
    (mail still queued for their servers, say) would otherwise be delivered, or waited for,
    by the next test's worker."""
    database = Database(url)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with database.engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    database.dispose()
    return url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(
    request: pytest.FixtureRequest,
    sqlite_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """One database per module and backend, for folders whose tests isolate themselves.

    Tests that act only in fresh workspaces of their own (`api`, `make_api`) are
    as isolated as with a fresh database, without the set-up cost of one per
    test; such a folder's conftest makes this its `database_url`.
    """
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("module") / "postyard.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    return emptied(request.getfixturevalue("postgres_database"))


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Fast retries and short timeouts, so retry tests take fractions of a second."""
    return Settings(
        database_url=database_url,
        secret_key=SECRET_KEY,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        smtp_timeout_seconds=5,
        worker_poll_seconds=0.05,
    )


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url)
    yield database
    database.dispose()


@pytest.fixture
def app_client(settings: Settings, database: Database) -> Iterator[TestClient]:
    """The API without credentials, for requests that test authentication itself."""
    with TestClient(create_app(settings, database)) as client:
        yield client


ApiFactory = Callable[..., TestClient]


@pytest.fixture
def clock() -> Clock:
    """The clock the app reads; a test module overrides this fixture to move time itself."""
    return utcnow


@pytest.fixture
def make_api(settings: Settings, database: Database, clock: Clock) -> Iterator[ApiFactory]:
    """`make_api(plan="premium")`: a new workspace and a client that acts for it."""
    clients: list[TestClient] = []
    app = create_app(settings, database)
    app.state.context = dataclasses.replace(app.state.context, clock=clock)

    def make(plan: str = "premium", name: str = "Acme") -> TestClient:
        with database.session() as session:
            created = create_workspace(session, name, Plan(plan))
        client = TestClient(app, headers={"Authorization": f"Bearer {created.api_key}"})
        client.workspace_id = created.workspace_id  # type: ignore[attr-defined]
        client.api_key = created.api_key  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def api(make_api: ApiFactory) -> TestClient:
    """A client for a fresh premium workspace."""
    return make_api("premium")


@pytest.fixture
def deliver(database: Database, settings: Settings) -> Callable[..., None]:
    """Run a delivery worker until nothing is waiting or in flight."""

    def run(timeout: float = 20.0, **overrides: object) -> None:
        worker_settings = Settings(**{**settings.__dict__, **overrides})
        asyncio.run(Worker(database, worker_settings).drain(timeout=timeout))

    return run


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(tls_ca: trustme.CA) -> str:
    """The test CA as a PEM bundle, as a user pastes it into `ca_bundle`."""
    return tls_ca.cert_pem.bytes().decode()


@pytest.fixture(scope="session")
def server_tls(tls_ca: trustme.CA) -> ssl.SSLContext:
    """A server-side context with a certificate for 127.0.0.1 and localhost, signed by the CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def smtp_sink() -> str:
    """Path of Postfix's smtp-sink, for fault and speed tests."""
    path = shutil.which("smtp-sink") or (
        "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
    )
    if path is None:
        need("Postfix's smtp-sink is not installed (Debian package postfix)")
    assert path is not None
    return path


@pytest.fixture
def start_sink(smtp_sink: str, tmp_path: Path) -> Iterator[Callable[..., SmtpSink]]:
    """`start_sink(*smtp_sink_options, port=None)`: smtp-sink with its own fault switches
    (see tests/integration/smtp_sink.py) on `port` or a free one, recording what it took;
    stopped after the test. Stop one and start another on its port to replace a faulty
    server by a healthy one.
    """
    started: list[SmtpSink] = []

    def start(*options: str, port: int | None = None) -> SmtpSink:
        dumps = tmp_path / f"sink-{len(started)}"
        sink = start_smtp_sink(smtp_sink, dumps, *options, port=port or free_port())
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()
