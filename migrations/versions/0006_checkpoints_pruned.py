"""checkpoints: pruned_at, when hlbd deleted a checkpoint's file to keep the newest N

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

``hlbd train --keep-checkpoints N`` deletes a run's older checkpoint files once a newer
one is written and recorded; the row stays (the checkpoint existed, at that epoch, that
size) and ``pruned_at`` says when its file went. NULL: the file was not pruned by hlbd
(every row recorded before this revision). No view reads the checkpoints table.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("checkpoints", sa.Column("pruned_at", sa.DateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("pruned_at")
