"""one running segment per run; NaN flags for LR and grad norm; superseded anomalies

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

- ``ux_segments_one_running``: a unique partial index on ``segments(run_id) WHERE
  status = 'running'``, so the database itself lets one attempt at a time hold a run
  (two racing resumes cannot both insert a running segment). Runs that already have
  several running segments (racing resumes before this revision) keep the newest one
  running; the others are marked crashed.
- ``epochs.lr_is_nan``, ``epochs.grad_norm_is_nan``, ``steps.lr_is_nan``: NaN travels as
  a flag beside NULL, as ``loss_is_nan`` does, so NULL only ever means "not recorded".
  Imported epochs whose NaN was listed in ``runs.extra`` under ``nan_not_stored`` get
  their flag set.
- ``anomalies.superseded_by`` (flags raised by an attempt that a resume replaced) and
  ``anomalies.value_is_nan``.
- The views ``epoch_metrics`` and ``step_metrics`` are recreated with the new flags.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

EPOCH_COLUMNS = (
    "run_id, epoch, segment, loss, loss_is_nan, grad_norm, grad_norm_is_nan, grad_norm_max, "
    "grad_norm_min, steps, nonfinite_steps, clipped_steps, skipped_steps, lr, lr_is_nan, "
    "token_accuracy, wall_seconds, tokens, tokens_per_second, recorded_at"
)
STEP_COLUMNS = ("run_id, step, epoch, segment, loss, loss_is_nan, grad_norm, grad_norm_is_nan, "
                "lr, lr_is_nan")
OLD_EPOCH_COLUMNS = (
    "run_id, epoch, segment, loss, loss_is_nan, grad_norm, grad_norm_max, grad_norm_min, "
    "steps, nonfinite_steps, clipped_steps, skipped_steps, lr, token_accuracy, "
    "wall_seconds, tokens, tokens_per_second, recorded_at"
)
OLD_STEP_COLUMNS = ("run_id, step, epoch, segment, loss, loss_is_nan, grad_norm, "
                    "grad_norm_is_nan, lr")
FLAG_OF_LIST = {"grad_norms": "grad_norm_is_nan", "learning_rates": "lr_is_nan"}


def _flag(name: str) -> sa.Column:
    return sa.Column(name, sa.Boolean, nullable=False, server_default=sa.false())


def upgrade() -> None:
    op.execute("DROP VIEW step_metrics")
    op.execute("DROP VIEW epoch_metrics")
    bind = op.get_bind()

    # Racing resumes before this revision could leave several running segments of a run.
    op.execute("UPDATE segments SET status = 'crashed' WHERE status = 'running' AND "
               "segment < (SELECT max(s2.segment) FROM segments s2 WHERE s2.run_id = "
               "segments.run_id AND s2.status = 'running')")
    op.create_index("ux_segments_one_running", "segments", ["run_id"], unique=True,
                    sqlite_where=sa.text("status = 'running'"),
                    postgresql_where=sa.text("status = 'running'"))

    with op.batch_alter_table("epochs") as batch:
        batch.add_column(_flag("grad_norm_is_nan"))
        batch.add_column(_flag("lr_is_nan"))
    with op.batch_alter_table("steps") as batch:
        batch.add_column(_flag("lr_is_nan"))
    with op.batch_alter_table("anomalies") as batch:
        batch.add_column(sa.Column("superseded_by", sa.Integer))
        batch.add_column(_flag("value_is_nan"))

    # NaN grad norms / LRs an import could only list in extra.nan_not_stored.
    runs = bind.execute(sa.text(
        "SELECT run_id, extra FROM runs WHERE extra LIKE '%nan_not_stored%'")).fetchall()
    for run_id, extra in runs:
        decoded = json.loads(extra)
        listed = decoded.get("nan_not_stored") if isinstance(decoded, dict) else None
        if not isinstance(listed, dict):
            continue
        for key, epochs in listed.items():
            if key in FLAG_OF_LIST and epochs:
                bind.execute(sa.text(
                    f"UPDATE epochs SET {FLAG_OF_LIST[key]} = :yes WHERE run_id = :run_id "
                    f"AND epoch IN ({', '.join(str(int(e)) for e in epochs)})"),
                    {"yes": True, "run_id": run_id})
    # Flags raised on epochs a resume has since superseded are superseded with them.
    bind.execute(sa.text(
        "UPDATE anomalies SET superseded_by = (SELECT e.superseded_by FROM epochs e "
        "WHERE e.run_id = anomalies.run_id AND e.segment = anomalies.segment "
        "AND e.epoch = anomalies.epoch) WHERE superseded_by IS NULL"))

    op.execute(f"CREATE VIEW epoch_metrics AS SELECT {EPOCH_COLUMNS} FROM epochs "
               "WHERE superseded_by IS NULL")
    op.execute(f"CREATE VIEW step_metrics AS SELECT {STEP_COLUMNS} FROM steps "
               "WHERE superseded_by IS NULL")


def downgrade() -> None:
    op.execute("DROP VIEW step_metrics")
    op.execute("DROP VIEW epoch_metrics")
    with op.batch_alter_table("anomalies") as batch:
        batch.drop_column("value_is_nan")
        batch.drop_column("superseded_by")
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("lr_is_nan")
    with op.batch_alter_table("epochs") as batch:
        batch.drop_column("lr_is_nan")
        batch.drop_column("grad_norm_is_nan")
    op.drop_index("ux_segments_one_running", "segments")
    op.execute(f"CREATE VIEW epoch_metrics AS SELECT {OLD_EPOCH_COLUMNS} FROM epochs "
               "WHERE superseded_by IS NULL")
    op.execute(f"CREATE VIEW step_metrics AS SELECT {OLD_STEP_COLUMNS} FROM steps "
               "WHERE superseded_by IS NULL")
