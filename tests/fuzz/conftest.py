"""Fuzz and property tests: bounded, derandomized, each acting in workspaces of its own.

Every Hypothesis run here is derandomized (the same examples on every run, so CI is
repeatable) and capped in examples; the whole folder is meant to stay under two
minutes. The API fuzzers act only in fresh workspaces of their own and take one database
per module and backend (`module_database_url`), as `tests/api` does; the header
test runs a delivery worker, which drains the whole database, so it keeps the
fresh database per test.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "postyard-fuzz",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
