"""message contents apart from the outbox row

A delivery's bodies and extra headers move from `deliveries` to `delivery_contents`, one
row per delivery written when it is queued. Workers rewrite a `deliveries` row at every
claim and outcome; with the message inline each of those writes copied kilobytes.
Existing deliveries keep their contents (copied over before the columns are dropped).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 05:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONTENT_COLUMNS = ("text_body", "html_body", "headers")


def upgrade() -> None:
    op.create_table(
        "delivery_contents",
        sa.Column("delivery_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("text_body", sa.Text(), nullable=True),
        sa.Column("html_body", sa.Text(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_delivery_contents_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_delivery_contents")),
    )
    op.execute(
        "INSERT INTO delivery_contents (delivery_id, text_body, html_body, headers) "
        "SELECT id, text_body, html_body, headers FROM deliveries"
    )
    # Plain ALTER TABLE … DROP COLUMN (SQLite 3.35+, as RETURNING already needs), not a
    # batch rebuild: a rebuilt table would lose the AUTOINCREMENT that keeps ids unique.
    for column in CONTENT_COLUMNS:
        op.drop_column("deliveries", column)


def downgrade() -> None:
    op.add_column("deliveries", sa.Column("text_body", sa.Text(), nullable=True))
    op.add_column("deliveries", sa.Column("html_body", sa.Text(), nullable=True))
    op.add_column("deliveries", sa.Column("headers", sa.JSON(), nullable=True))
    for column in CONTENT_COLUMNS:
        op.execute(
            f"UPDATE deliveries SET {column} = (SELECT {column} FROM delivery_contents "
            "WHERE delivery_contents.delivery_id = deliveries.id)"
        )
    op.drop_table("delivery_contents")
