"""adapter recipes: generated adapters kept as what rebuilds them, not as weights

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapter_recipes",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("generator_id", sa.Integer(), nullable=False),
        sa.Column("generator_sha256", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("decoder", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("adapter_id"),
    )
    op.create_index("ix_adapter_recipes_generator_id", "adapter_recipes", ["generator_id"])
    with op.batch_alter_table("adapters") as batch:
        batch.alter_column("blob_key", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    # a recipe adapter has no weights to fall back on: refuse rather than lose it
    bind = op.get_bind()
    left = bind.scalar(sa.text("SELECT count(*) FROM adapters WHERE blob_key IS NULL"))
    if left:
        raise RuntimeError(
            f"{left} adapters are kept as recipes: materialise them "
            "(`loramint adapters materialise ID`) before downgrading"
        )
    with op.batch_alter_table("adapters") as batch:
        batch.alter_column("blob_key", existing_type=sa.String(length=64), nullable=False)
    op.drop_index("ix_adapter_recipes_generator_id", table_name="adapter_recipes")
    op.drop_table("adapter_recipes")
