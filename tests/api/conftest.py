"""API tests act only in fresh workspaces of their own: one database per module suffices."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def database_url(module_database_url: str) -> str:
    return module_database_url
