"""points: any named series a loop logs (hlbd.Run); the view metric_points; checkpoints.step

``points`` holds the values a run logs under names of its own (``acc``, ``val/loss``,
``lr/1`` ...), one row per run, segment, name and step: ``scope`` 'step' for a value of
one optimizer step, 'epoch' for a value given when an epoch closed (its ``step`` is the
step at which it closed), 'skipped' for a value of an attempt GradScaler skipped (its
``step`` is the step it was to be). NaN is stored as NULL with ``value_is_nan`` set, as in every
other table; a resume marks the rows after its start as superseded, as for steps.

``metric_points(run_id, segment, key, step, epoch, value, value_is_nan, scope)`` is every
per-step and epoch-closing value of the effective history under its name: the rows of
``points`` and the series of ``steps`` (``loss``, ``grad_norm``, ``lr``), superseded rows
left out. ``checkpoints.step``: the optimizer steps taken when the checkpoint was
recorded (NULL for checkpoints recorded before this revision, and by ``hlbd train``
before it recorded through ``hlbd.Run``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STEP_SERIES = ("loss", "grad_norm", "lr")  # the columns of steps when this was written


def metric_points_sql() -> str:
    steps = [f"SELECT run_id, segment, '{series}' AS key, step, epoch, {series} AS value, "
             f"{series}_is_nan AS value_is_nan, 'step' AS scope FROM steps "
             f"WHERE superseded_by IS NULL AND ({series} IS NOT NULL OR {series}_is_nan)"
             for series in STEP_SERIES]
    points = ("SELECT run_id, segment, key, step, epoch, value, value_is_nan, scope "
              "FROM points WHERE superseded_by IS NULL")
    return "CREATE VIEW metric_points AS " + " UNION ALL ".join([points, *steps])


def upgrade() -> None:
    op.create_table(
        "points",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.run_id"), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("scope", sa.String(8), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("segment", sa.Integer, primary_key=True),
        sa.Column("epoch", sa.Integer, primary_key=True),
        sa.Column("value", sa.Float),
        sa.Column("value_is_nan", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("superseded_by", sa.Integer),
    )
    op.add_column("checkpoints", sa.Column("step", sa.BigInteger, nullable=True))
    op.execute(metric_points_sql())


def downgrade() -> None:
    op.execute("DROP VIEW metric_points")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("step")
    op.drop_table("points")
