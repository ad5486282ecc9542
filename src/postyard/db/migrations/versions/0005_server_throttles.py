"""per-server connection slots and send pacing, shared by every worker

Two coordination tables for the limits of issue 4: `smtp_server_slots` holds one leased
row per open connection (at most `max_connections` per server), `smtp_server_throttles` the
next free send time of a rate-limited server and when a worker last waited for a slot.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "smtp_server_slots",
        sa.Column("server_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("server_id", "slot", name=op.f("pk_smtp_server_slots")),
    )
    op.create_table(
        "smtp_server_throttles",
        sa.Column("server_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("next_free_at", sa.Float(), nullable=True),
        sa.Column("wanted_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("server_id", name=op.f("pk_smtp_server_throttles")),
    )


def downgrade() -> None:
    op.drop_table("smtp_server_throttles")
    op.drop_table("smtp_server_slots")
