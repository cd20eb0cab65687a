"""initial run store: runs, segments, epochs, steps, checkpoints, anomalies and views

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

EPOCH_COLUMNS = (
    "run_id, epoch, segment, loss, loss_is_nan, grad_norm, grad_norm_max, grad_norm_min, "
    "steps, nonfinite_steps, clipped_steps, skipped_steps, lr, token_accuracy, "
    "wall_seconds, tokens, tokens_per_second, recorded_at"
)
STEP_COLUMNS = "run_id, step, epoch, segment, loss, loss_is_nan, grad_norm, grad_norm_is_nan, lr"


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("heartbeat_at", sa.DateTime),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("dataset_stats", sa.Text, nullable=False),
        sa.Column("vocab", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("run_dir", sa.Text),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("source_hash", sa.String(64), unique=True),
        sa.Column("extra", sa.Text),
    )
    op.create_table(
        "segments",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.run_id"), primary_key=True),
        sa.Column("segment", sa.Integer, primary_key=True),
        sa.Column("start_epoch", sa.Integer, nullable=False),
        sa.Column("resumed_from", sa.Text),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("ended_at", sa.DateTime),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer),
        sa.Column("hostname", sa.String(255)),
    )
    op.create_table(
        "epochs",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.run_id"), primary_key=True),
        sa.Column("segment", sa.Integer, primary_key=True),
        sa.Column("epoch", sa.Integer, primary_key=True),
        sa.Column("loss", sa.Float),
        sa.Column("loss_is_nan", sa.Boolean, nullable=False),
        sa.Column("grad_norm", sa.Float),
        sa.Column("grad_norm_max", sa.Float),
        sa.Column("grad_norm_min", sa.Float),
        sa.Column("steps", sa.Integer),
        sa.Column("nonfinite_steps", sa.Integer),
        sa.Column("clipped_steps", sa.Integer),
        sa.Column("skipped_steps", sa.Integer),
        sa.Column("lr", sa.Float),
        sa.Column("token_accuracy", sa.Float),
        sa.Column("wall_seconds", sa.Float),
        sa.Column("tokens", sa.Integer),
        sa.Column("tokens_per_second", sa.Float),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
        sa.Column("superseded_by", sa.Integer),
    )
    op.create_table(
        "steps",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.run_id"), primary_key=True),
        sa.Column("segment", sa.Integer, primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("loss", sa.Float),
        sa.Column("loss_is_nan", sa.Boolean, nullable=False),
        sa.Column("grad_norm", sa.Float),
        sa.Column("grad_norm_is_nan", sa.Boolean, nullable=False),
        sa.Column("lr", sa.Float),
        sa.Column("superseded_by", sa.Integer),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("segment", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("size_bytes", sa.Integer),
    )
    op.create_index("ix_checkpoints_run_id", "checkpoints", ["run_id"])
    op.create_table(
        "anomalies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("segment", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer),
        sa.Column("step", sa.Integer),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_anomalies_run_id", "anomalies", ["run_id"])
    # The public SQL contract: one row per effective epoch / step (superseded rows hidden).
    op.execute(
        f"CREATE VIEW epoch_metrics AS SELECT {EPOCH_COLUMNS} FROM epochs "
        "WHERE superseded_by IS NULL"
    )
    op.execute(
        f"CREATE VIEW step_metrics AS SELECT {STEP_COLUMNS} FROM steps "
        "WHERE superseded_by IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP VIEW step_metrics")
    op.execute("DROP VIEW epoch_metrics")
    for table in ("anomalies", "checkpoints", "steps", "epochs", "segments", "runs"):
        op.drop_table(table)
