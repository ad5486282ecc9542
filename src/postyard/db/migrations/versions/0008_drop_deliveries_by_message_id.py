"""deliveries no longer found by Message-ID

Queueing now knows the ids of the outbox rows it inserts (`outbox._insert`), so contents
rows no longer look theirs up by Message-ID. The index cost more than any other part of
queueing on SQLite: its keys are random, so each batch of 1,000 rows rewrote hundreds of its
pages into the write-ahead log, and the lock was held ~25 % longer (bench/README.md).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 11:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_deliveries_message_id", table_name="deliveries")


def downgrade() -> None:
    op.create_index("ix_deliveries_message_id", "deliveries", ["message_id"])
