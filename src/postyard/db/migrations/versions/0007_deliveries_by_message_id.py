"""deliveries found by Message-ID

Queueing writes a delivery's contents row by looking its new outbox row up by Message-ID
(new and unique for every message), so that the outbox rows can be inserted without
asking for their ids back, which cost more than the insert. The index also finds the
delivery that a bounce or a reply refers to.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 08:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_deliveries_message_id", "deliveries", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_message_id", table_name="deliveries")
