"""runs.tags and runs.notes: what a person says of a run after the fact

``tags`` is a JSON list of short labels (``hlbd.init(tags=...)``, ``hlbd tag``) and
``notes`` free text (``hlbd note``); both may change after the run ended, unlike its
history. Tags that runs recorded through hlbd.Run kept in ``extra`` move here.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("tags", sa.Text, nullable=True))
    op.add_column("runs", sa.Column("notes", sa.Text, nullable=True))
    conn = op.get_bind()
    runs = sa.table("runs", sa.column("run_id", sa.String), sa.column("extra", sa.Text),
                    sa.column("tags", sa.Text))
    for run_id, extra in conn.execute(sa.select(runs.c.run_id, runs.c.extra)
                                      .where(runs.c.extra.like('%"tags"%'))).all():
        values = json.loads(extra)
        tags = values.pop("tags", None)
        if not isinstance(tags, list):
            continue
        conn.execute(sa.update(runs).where(runs.c.run_id == run_id).values(
            extra=json.dumps(values, sort_keys=True), tags=json.dumps(tags) if tags else None))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("notes")
        batch.drop_column("tags")
