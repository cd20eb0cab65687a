"""PostgreSQL: 64-bit checkpoint sizes and epoch token counts

An INTEGER in SQLite holds 64 bits; in PostgreSQL it holds 32, so a checkpoint file of
2 GiB or more (or an epoch of more than 2^31 tokens) could not be recorded there. On
PostgreSQL the views that read these columns are dropped and recreated from their own
definitions around the change (whatever columns earlier revisions gave them). SQLite:
nothing to do.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

WIDENED = (("checkpoints", "size_bytes"), ("epochs", "tokens"))
VIEWS = ("epoch_metrics", "step_metrics")


def _retype(column_type) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    definitions = {view: bind.execute(sa.text("SELECT pg_get_viewdef(CAST(:v AS regclass))"),
                                      {"v": view}).scalar() for view in VIEWS}
    for view in VIEWS:
        op.execute(f"DROP VIEW {view}")
    for table, column in WIDENED:
        op.alter_column(table, column, type_=column_type)
    for view, definition in definitions.items():
        op.execute(f"CREATE VIEW {view} AS {definition}")


def upgrade() -> None:
    _retype(sa.BigInteger())


def downgrade() -> None:
    _retype(sa.Integer())
