"""generator pins: the generator an operator chose to serve a base model and method

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generator_pins",
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=50), nullable=False),
        sa.Column("generator_id", sa.Integer(), nullable=False),
        sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["base_model_id"], ["base_models.id"]),
        sa.ForeignKeyConstraint(["generator_id"], ["generators.id"]),
        sa.PrimaryKeyConstraint("base_model_id", "method"),
    )
    op.create_index("ix_generator_pins_generator_id", "generator_pins", ["generator_id"])


def downgrade() -> None:
    op.drop_index("ix_generator_pins_generator_id", table_name="generator_pins")
    op.drop_table("generator_pins")
