"""adapter artifacts: named blobs kept with an adapter (trajectory statistics, seed examples)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapter_artifacts",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("blob_key", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("adapter_id", "name"),
    )
    op.create_index("ix_adapter_artifacts_blob_key", "adapter_artifacts", ["blob_key"])


def downgrade() -> None:
    op.drop_index("ix_adapter_artifacts_blob_key", table_name="adapter_artifacts")
    op.drop_table("adapter_artifacts")
