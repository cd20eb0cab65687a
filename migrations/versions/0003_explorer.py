"""explorer: epochs.recorded_at may be NULL (imported epochs); step_rollups for fast reads

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

An imported epoch has no time it was recorded (the older report does not hold one), so
``epochs.recorded_at`` accepts NULL. On SQLite that recreates the table (batch mode),
and the views that read it are dropped first and recreated with their full column lists.

``step_rollups`` holds, per stretch of at most ``ROLLUP_STEPS`` consecutive steps of one
epoch of one segment, the count, sum, min and max of each step metric: the explorer
reads 100,000-step runs from it instead of from every step. The store keeps it as it
writes steps; here it is filled from the steps already recorded.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The views as 0002 left them (recreated unchanged around the table rebuild).
EPOCH_COLUMNS = (
    "run_id, epoch, segment, loss, loss_is_nan, grad_norm, grad_norm_is_nan, grad_norm_max, "
    "grad_norm_min, steps, nonfinite_steps, clipped_steps, skipped_steps, lr, lr_is_nan, "
    "token_accuracy, wall_seconds, tokens, tokens_per_second, recorded_at"
)
STEP_COLUMNS = ("run_id, step, epoch, segment, loss, loss_is_nan, grad_norm, grad_norm_is_nan, "
                "lr, lr_is_nan")
ROLLUP_STEPS = 32  # hlbd.store.ROLLUP_STEPS when this revision was written


def _finite(column: str) -> str:
    return f"CASE WHEN {column} > -:inf AND {column} < :inf THEN {column} END"


def upgrade() -> None:
    op.execute("DROP VIEW step_metrics")
    op.execute("DROP VIEW epoch_metrics")
    with op.batch_alter_table("epochs") as batch:
        batch.alter_column("recorded_at", existing_type=sa.DateTime, nullable=True)
    # Before this revision an imported run's epochs got the import time, the same instant
    # as the run's created_at: that time was invented, so it becomes NULL. (A resume of
    # an imported run records later segments with real times; they stay.)
    op.execute("UPDATE epochs SET recorded_at = NULL WHERE segment = 1 AND EXISTS ("
               "SELECT 1 FROM runs WHERE runs.run_id = epochs.run_id "
               "AND runs.source = 'imported' AND runs.created_at = epochs.recorded_at)")
    op.execute(
        f"CREATE VIEW epoch_metrics AS SELECT {EPOCH_COLUMNS} FROM epochs "
        "WHERE superseded_by IS NULL"
    )
    op.execute(
        f"CREATE VIEW step_metrics AS SELECT {STEP_COLUMNS} FROM steps "
        "WHERE superseded_by IS NULL"
    )
    op.create_table(
        "step_rollups",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.run_id"), primary_key=True),
        sa.Column("segment", sa.Integer, primary_key=True),
        sa.Column("first_step", sa.Integer, primary_key=True),
        sa.Column("last_step", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        *[column for metric in ("loss", "grad_norm", "lr") for column in (
            sa.Column(f"{metric}_count", sa.Integer, nullable=False),
            sa.Column(f"{metric}_sum", sa.Float),
            sa.Column(f"{metric}_min", sa.Float),
            sa.Column(f"{metric}_max", sa.Float),
            sa.Column(f"{metric}_nonfinite", sa.Integer, nullable=False))],
        sa.Column("superseded_by", sa.Integer),
    )
    aggregates = []
    for metric, flag in (("loss", "loss_is_nan"), ("grad_norm", "grad_norm_is_nan"),
                         ("lr", "lr_is_nan")):
        finite = _finite(metric)
        nan = f"{flag} OR " if flag else ""
        aggregates += [f"COUNT({finite})", f"SUM({finite})", f"MIN({finite})",
                       f"MAX({finite})",
                       (f"SUM(CASE WHEN {nan}{metric} >= :inf OR {metric} <= -:inf "
                        "THEN 1 ELSE 0 END)")]
    op.get_bind().execute(sa.text(
        "INSERT INTO step_rollups (run_id, segment, first_step, last_step, epoch, steps, "
        + ", ".join(f"{m}_{a}" for m in ("loss", "grad_norm", "lr")
                    for a in ("count", "sum", "min", "max", "nonfinite"))
        + ", superseded_by) "
        f"SELECT run_id, segment, MIN(step), MAX(step), epoch, COUNT(*), "
        f"{', '.join(aggregates)}, superseded_by FROM steps "
        f"GROUP BY run_id, segment, epoch, (step - 1) / {ROLLUP_STEPS}, superseded_by"
    ), {"inf": float("inf")})


def downgrade() -> None:
    op.drop_table("step_rollups")
    op.execute("DROP VIEW step_metrics")
    op.execute("DROP VIEW epoch_metrics")
    # 0001 has no way to say "not recorded": imported epochs get their run's creation
    # (import) time back, as 0001 stored them.
    op.execute("UPDATE epochs SET recorded_at = (SELECT created_at FROM runs "
               "WHERE runs.run_id = epochs.run_id) WHERE recorded_at IS NULL")
    with op.batch_alter_table("epochs") as batch:
        batch.alter_column("recorded_at", existing_type=sa.DateTime, nullable=False)
    op.execute(
        f"CREATE VIEW epoch_metrics AS SELECT {EPOCH_COLUMNS} FROM epochs "
        "WHERE superseded_by IS NULL"
    )
    op.execute(
        f"CREATE VIEW step_metrics AS SELECT {STEP_COLUMNS} FROM steps "
        "WHERE superseded_by IS NULL"
    )
