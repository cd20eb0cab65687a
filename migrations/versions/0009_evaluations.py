"""evaluations: a run's model scored on an HLBD file (``hlbd eval``)

One row per value of one evaluation: which run, which checkpoint file (its path, the
epoch and step it holds, a SHA-256 of its bytes), which dataset file (as given, and a
SHA-256 of its bytes), how many pairs were scored and answered by greedy decoding, when
and in how many seconds, and the value under its name (``loss``, ``token_accuracy``,
``exact``, ``exact/<module>``, ``exact/level_<i>``). NaN is stored as NULL with
``value_is_nan`` set, as in every other table. The same checkpoint bytes, dataset bytes
and number of decoded pairs make the same evaluation: evaluating again adds nothing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.run_id"), primary_key=True),
        sa.Column("checkpoint_sha256", sa.String(64), primary_key=True),
        sa.Column("dataset_sha256", sa.String(64), primary_key=True),
        sa.Column("exact_pairs", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("checkpoint", sa.Text, nullable=False),
        sa.Column("checkpoint_epoch", sa.Integer, nullable=False),
        sa.Column("checkpoint_step", sa.BigInteger),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("pairs", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float),
        sa.Column("evaluated_at", sa.DateTime, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("value_is_nan", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_table("evaluations")
