"""The admin UI in a real browser: Debian's Chromium driven by Playwright, against the app
served for real by uvicorn (with its delivery worker) and real local SMTP servers.

One browser, one app and one set of SMTP servers for the whole session; each test
gets a workspace, a browser context (its own cookies) and a page of its own.
Without Playwright or Chromium the tests skip with the reason (fail in CI).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from tests.conftest import SECRET_KEY, need

try:  # the test modules take `expect` from here, so that they load without Playwright
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the `browser` fixture skips (or fails) with the reason
    expect = None  # type: ignore[assignment]

from postyard.api.app import create_app
from postyard.config import Settings
from postyard.db.engine import Database
from postyard.db.migrate import upgrade
from postyard.localsmtp import LocalSMTPServer, free_port
from postyard.routing import Plan
from postyard.services.workspaces import create_workspace

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000
DOCS = Path(__file__).resolve().parents[2] / "docs"


@dataclass(frozen=True)
class Workspace:
    id: int
    api_key: str


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser tests last.

    While Playwright's sync API has a browser open it keeps its event loop
    running in the main thread, and `asyncio.run()` (the worker in other tests)
    refuses to start under a running loop. One browser serves the whole session,
    so the tests that use it come after all the others.
    """
    here = Path(__file__).parent
    items.sort(key=lambda item: here in item.path.parents)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("Playwright for Python is not installed (pip install -e '.[dev]')")
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if executable is None:
        need("Chromium is not installed (Debian package chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def ui_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path = tmp_path_factory.mktemp("browser") / "postyard.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    return Settings(
        database_url=url,
        secret_key=SECRET_KEY,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        smtp_timeout_seconds=5,
        worker_poll_seconds=0.05,
    )


@pytest.fixture(scope="session")
def ui_database(ui_settings: Settings) -> Iterator[Database]:
    database = Database(ui_settings.database_url)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def base_url(browser: Any, ui_settings: Settings, ui_database: Database) -> Iterator[str]:
    """The app with its delivery worker, served by uvicorn in a thread of this process."""
    app = create_app(ui_settings, ui_database, run_worker=True)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture(scope="session")
def smtp() -> Iterator[dict[str, LocalSMTPServer]]:
    """Three real SMTP servers, named as in DESIGN §8's example."""
    servers = {
        name: LocalSMTPServer(name=name) for name in ("smtp-main", "smtp-events", "smtp-news")
    }
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def new_workspace(ui_database: Database) -> Callable[..., Workspace]:
    def make(plan: str = "premium", name: str = "Acme") -> Workspace:
        with ui_database.session() as session:
            created = create_workspace(session, name, Plan(plan))
        return Workspace(created.workspace_id, created.api_key)

    return make


@pytest.fixture
def workspace(new_workspace: Callable[..., Workspace]) -> Workspace:
    return new_workspace()


@pytest.fixture
def context(browser: Any, base_url: str) -> Iterator[Any]:
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context: Any) -> Any:
    return context.new_page()


def sign_in(page: Any, api_key: str) -> None:
    page.goto("/login")
    page.get_by_label("API key").fill(api_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/overview")


@pytest.fixture
def signed_in(page: Any, workspace: Workspace) -> Any:
    """A page signed in to a fresh premium workspace."""
    sign_in(page, workspace.api_key)
    return page


@pytest.fixture
def screenshot_path(tmp_path: Path) -> Callable[[str], Path]:
    """Where a screenshot goes: docs/ with POSTYARD_UPDATE_SCREENSHOTS=1, else a temp dir."""

    def path(name: str) -> Path:
        if os.environ.get("POSTYARD_UPDATE_SCREENSHOTS") == "1":
            return DOCS / name
        return tmp_path / name

    return path
