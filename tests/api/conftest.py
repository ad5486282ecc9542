"""API tests share one database per module and backend.

Each test acts in fresh workspaces of its own (`api`, `make_api`), which
isolates it as well as a fresh database would, without the set-up cost of one
database per test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest,
    sqlite_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("api") / "postyard.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    return url
