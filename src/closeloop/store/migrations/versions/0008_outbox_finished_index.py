"""Find the writebacks that finished in a window, and a case's writebacks, without scanning
the outbox (reconciliation, `case show`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_updated", "outbox", ["kind", "updated_at"])
    op.create_index("ix_outbox_case", "outbox", ["case_id", "kind"])


def downgrade() -> None:
    op.drop_index("ix_outbox_case", table_name="outbox")
    op.drop_index("ix_outbox_updated", table_name="outbox")
