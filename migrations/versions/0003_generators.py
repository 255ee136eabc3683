"""generators: trained generator checkpoints, stored as blobs with their training history

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=50), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("training_adapter_ids", sa.JSON(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["base_model_id"], ["base_models.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("base_model_id", "name", name="uq_generator_name"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_generators_base_model_id", "generators", ["base_model_id"])
    op.create_index("ix_generators_blob_key", "generators", ["blob_key"])


def downgrade() -> None:
    op.drop_index("ix_generators_blob_key", table_name="generators")
    op.drop_index("ix_generators_base_model_id", table_name="generators")
    op.drop_table("generators")
