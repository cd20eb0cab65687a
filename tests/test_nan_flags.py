"""NULL only ever means "not recorded": a NaN learning rate or grad norm is stored with a
flag and flagged; anomaly rows of a superseded segment are superseded with it; the
migration brings an older database to the same state."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
from click.testing import CliRunner
from helpers.backends import rows, sqlite_at
from helpers.tiny import RESUMABLE, tiny_config
from sqlalchemy.exc import IntegrityError

from hlbd import exporter, importer
from hlbd.checkpoint import checkpoint_path
from hlbd.cli import main
from hlbd.runner import resume_checkpoint, start_run
from hlbd.store import Store


def test_a_nan_learning_rate_is_stored_flagged_and_comes_back_as_nan(tmp_path, store,
                                                                     db_url):
    report = tmp_path / "old" / "experiment_report.json"
    report.parent.mkdir()
    # An older tool's report whose scheduler produced NaN at epoch 2 (its own numbers).
    report.write_text('{"control_losses": [2.5, 2.25, 2.0], "grad_norms": [1.5, NaN, 0.5], '
                      '"learning_rates": [0.001, NaN, null]}')
    (outcome,) = importer.import_reports(store, report)

    assert rows(db_url, "SELECT epoch, lr, lr_is_nan, grad_norm, grad_norm_is_nan "
                        "FROM epoch_metrics WHERE run_id = :run ORDER BY epoch",
                run=outcome.run_id) == [
        (1, 0.001, 0, 1.5, 0), (2, None, 1, None, 1), (3, None, 0, 0.5, 0)]
    epochs = store.epochs(outcome.run_id)
    assert math.isnan(epochs[1]["lr"]) and epochs[2]["lr"] is None  # NaN vs not recorded
    exported = json.loads(exporter.export_json(store, outcome.run_id))
    assert exported["learning_rates"][0] == 0.001 and exported["learning_rates"][2] is None
    assert math.isnan(exported["learning_rates"][1]) and math.isnan(exported["grad_norms"][1])
    assert "nan_not_stored" not in store.get_run(outcome.run_id)["extra"]

    result = CliRunner().invoke(main, ["anomalies", outcome.run_id, "--db", db_url])
    assert result.exit_code == 0
    (flag,) = [line for line in result.output.splitlines() if "nonfinite_lr" in line]
    assert "epoch 2: LR is nan" in flag


def test_anomaly_rows_of_a_superseded_segment_are_marked_superseded(tmp_path, store):
    # lr 50 without clipping: every epoch's grad norm explodes and is flagged.
    first = start_run(tiny_config(RESUMABLE, epochs=4, lr=50.0, max_grad_norm=0.0,
                                  save_interval=2), store,
                      runs_root=tmp_path / "runs", progress=False)
    flagged = {a["epoch"] for a in store.anomalies(first.run_id)}
    assert {3, 4} <= flagged

    resume_checkpoint(store, checkpoint_path(first.run_dir, 2), epochs=4, progress=False)

    everything = store.anomalies(first.run_id, include_superseded=True)
    old = [a for a in everything if a["segment"] == 1]
    assert {(a["epoch"], a["superseded_by"]) for a in old} == {
        (e, 2 if e > 2 else None) for e in flagged}
    effective = store.anomalies(first.run_id)
    assert all(a["superseded_by"] is None for a in effective)
    assert {(a["epoch"], a["segment"]) for a in effective if a["epoch"] > 2} == {
        (e, 2) for e in flagged if e > 2}


OLD_REVISION_ROWS = """
INSERT INTO runs (run_id, name, status, created_at, heartbeat_at, config, dataset_stats,
                  source, extra)
VALUES ('raced', 'raced', 'running', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '{}',
        '{}', 'hlbd', NULL),
       ('old', 'old', 'imported', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '{}', '{}',
        'imported', '{"nan_not_stored": {"grad_norms": [2], "learning_rates": [1, 2]}}');
INSERT INTO segments (run_id, segment, start_epoch, started_at, status, pid, hostname)
VALUES ('raced', 1, 0, '2026-01-01 00:00:00', 'crashed', 1, 'h'),
       ('raced', 2, 1, '2026-01-01 00:00:01', 'running', 1, 'h'),
       ('raced', 3, 1, '2026-01-01 00:00:01', 'running', 1, 'h'),
       ('old', 1, 0, '2026-01-01 00:00:00', 'imported', 1, 'h');
INSERT INTO epochs (run_id, segment, epoch, loss, loss_is_nan, grad_norm, lr, recorded_at,
                    superseded_by)
VALUES ('raced', 1, 1, 2.0, 0, 1.0, 0.1, '2026-01-01', NULL),
       ('raced', 1, 2, 1.9, 0, 1.0, 0.1, '2026-01-01', 2),
       ('old', 1, 1, 2.0, 0, 1.0, NULL, '2026-01-01', NULL),
       ('old', 1, 2, 1.0, 0, NULL, NULL, '2026-01-01', NULL);
INSERT INTO anomalies (run_id, segment, epoch, rule, value, message, created_at)
VALUES ('raced', 1, 2, 'grad_explosion', 11.0, 'm', '2026-01-01'),
       ('raced', 1, 1, 'grad_explosion', 12.0, 'm', '2026-01-01');
"""


def test_the_migration_upgrades_a_database_written_by_the_previous_revision(tmp_path):
    db = tmp_path / "old.db"
    sqlite_at(db, "0001")
    conn = sqlite3.connect(db)
    conn.executescript(OLD_REVISION_ROWS)
    conn.close()

    result = CliRunner().invoke(main, ["db", "upgrade", "--db", str(db)])

    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT segment, status FROM segments WHERE run_id = 'raced' "
                        "ORDER BY segment").fetchall() == [
        (1, "crashed"), (2, "crashed"), (3, "running")]
    assert conn.execute("SELECT epoch, lr, lr_is_nan, grad_norm, grad_norm_is_nan FROM "
                        "epoch_metrics WHERE run_id = 'old' ORDER BY epoch").fetchall() == [
        (1, None, 1, 1.0, 0), (2, None, 1, None, 1)]
    assert conn.execute("SELECT epoch, superseded_by FROM anomalies ORDER BY epoch"
                        ).fetchall() == [(1, None), (2, 2)]
    assert conn.execute("SELECT count(*) FROM epochs").fetchone() == (4,)  # nothing lost
    conn.close()
    # The unique index is there: a second running segment is refused by the database.
    store = Store.open(str(db))
    with (pytest.raises(IntegrityError, match="UNIQUE constraint failed: segments.run_id"),
          store.engine.begin() as c):
        c.exec_driver_sql("INSERT INTO segments (run_id, segment, start_epoch, "
                          "started_at, status) VALUES ('raced', 4, 1, '2026-01-02', "
                          "'running')")
    store.close()
