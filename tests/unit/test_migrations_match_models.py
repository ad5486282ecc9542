"""The migrations build exactly the schema the models describe, on both databases.

Several people change the schema at once; a column added to a model without a
migration would work in tests that create tables from the models and fail on a
user's upgraded database.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from postyard.db.engine import Database
from postyard.db.models import Base


def test_migrated_database_has_every_table_column_and_index_of_the_models(
    database_url: str,
) -> None:
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": False}
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        database.dispose()
    assert differences == []
