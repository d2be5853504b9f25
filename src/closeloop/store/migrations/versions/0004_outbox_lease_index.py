"""Find the earliest lease end without scanning the outbox.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_outbox_leased",
        "outbox",
        ["leased_until"],
        sqlite_where=sa.text("leased_until IS NOT NULL"),
        postgresql_where=sa.text("leased_until IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_leased", table_name="outbox")
