"""initial schema: base models, adapters, lineage, description embeddings, index generation

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("architecture", sa.String(length=200), nullable=False),
        sa.Column("num_layers", sa.Integer(), nullable=False),
        sa.Column("hidden_size", sa.Integer(), nullable=False),
        sa.Column("linear_shapes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    state = op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(state, [{"id": 1, "generation": 0}])
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("peft_type", sa.String(length=40), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("alpha", sa.Double(), nullable=False),
        sa.Column("target_modules", sa.JSON(), nullable=False),
        sa.Column("layout_signature", sa.String(length=64), nullable=False),
        sa.Column("provenance", sa.String(length=20), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["base_model_id"], ["base_models.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("base_model_id", "name", name="uq_adapter_name"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_adapters_base_model_id", "adapters", ["base_model_id"])
    op.create_index("ix_adapters_layout_signature", "adapters", ["layout_signature"])
    op.create_index("ix_adapters_blob_key", "adapters", ["blob_key"])
    op.create_table(
        "adapter_parents",
        sa.Column("child_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=40), nullable=False),
        sa.Column("weight", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["child_id"], ["adapters.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["parent_id"], ["adapters.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("child_id", "parent_id"),
    )
    op.create_index("ix_adapter_parents_parent_id", "adapter_parents", ["parent_id"])
    op.create_table(
        "description_embeddings",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("adapter_id"),
    )


def downgrade() -> None:
    op.drop_table("description_embeddings")
    op.drop_index("ix_adapter_parents_parent_id", table_name="adapter_parents")
    op.drop_table("adapter_parents")
    op.drop_index("ix_adapters_blob_key", table_name="adapters")
    op.drop_index("ix_adapters_layout_signature", table_name="adapters")
    op.drop_index("ix_adapters_base_model_id", table_name="adapters")
    op.drop_table("adapters")
    op.drop_table("registry_state")
    op.drop_table("base_models")
