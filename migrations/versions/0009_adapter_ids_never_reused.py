"""adapter ids never reused on SQLite: 0007 rebuilt the adapters table without
AUTOINCREMENT, so the id of the newest adapter, once deleted, went to the next one

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # PostgreSQL's sequences never hand an id out twice: nothing to do there. On
    # SQLite the table is rebuilt with AUTOINCREMENT; the copy of its rows starts the
    # sequence at the largest id there is (an id deleted before this cannot be known).
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "adapters", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    pass  # the same columns either way; a rebuild back would only lose the guarantee
