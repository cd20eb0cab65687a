"""segments.start_step: a segment that continues from a checkpoint taken mid-epoch

A loop recorded through ``hlbd.Run`` (and the Trainer and Lightning integrations) may
checkpoint at any optimizer step, not only when an epoch closes. A segment resumed from
such a checkpoint starts after step ``start_step``: the steps, step rollups and points
earlier segments recorded after that step become superseded by it, and the epochs and
anomalies after ``start_epoch`` (the epochs closed at the checkpoint) as before. NULL:
the segment starts at an epoch boundary (every ``hlbd train`` segment, and every segment
recorded before this revision).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("segments", sa.Column("start_step", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("start_step")
