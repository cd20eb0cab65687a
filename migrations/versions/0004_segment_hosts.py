"""segments: how many processes an attempt ran on, and on which hosts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

A run trained under torchrun records, per attempt, its world size and the host of each
rank (a JSON list in rank order). Segments recorded before this revision keep NULL in
both: not recorded.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("segments", sa.Column("world_size", sa.Integer))
    op.add_column("segments", sa.Column("hosts", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("hosts")
        batch.drop_column("world_size")
