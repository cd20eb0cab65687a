"""The recorder writes off the training thread (DESIGN invariant 12): in order, drained
before a checkpoint is recorded and at every exit, its errors raised in the loop."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from helpers.tiny import tiny_config

from hlbd import recorder as recorder_module
from hlbd.report import REPORT_NAME
from hlbd.run import Run
from hlbd.runner import RunFailed, start_run
from hlbd.store import Store


def recorder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hlbd-recorder"]


def test_a_failed_write_fails_the_run_at_the_next_step_and_nothing_after_it_is_written(
        tmp_path):
    db = tmp_path / "runs.db"  # SQLite: the test breaks the store behind hlbd's back
    store = Store.open(str(db))
    calls, dropped = [], []

    def drop_steps_table_once_epoch_1_is_written() -> bool:
        # Polled before the run starts and before every micro-batch (9 per epoch: 143
        # pairs / 16). The writer does not wait, so epoch 1's row shows up during epoch 2.
        calls.append(1)
        if not dropped:
            with sqlite3.connect(db) as conn:
                if conn.execute("SELECT count(*) FROM epochs").fetchone()[0]:
                    conn.execute("DROP TABLE steps")
                    dropped.append(len(calls))
        return False

    with pytest.raises(RunFailed, match="no such table: steps"):
        start_run(tiny_config(epochs=6), store, runs_root=tmp_path / "runs", progress=False,
                  should_stop=drop_steps_table_once_epoch_1_is_written)

    [run] = store.list_runs()
    assert run["status"] == "failed"
    assert "RecordingFailed" in run["error"] and "no such table: steps" in run["error"]
    # The first write after the drop failed: neither it nor anything after it is in the
    # store or the report, and training stopped soon after, not at the end of 6 epochs.
    recorded = [e["epoch"] for e in store.epochs(run["run_id"])]
    assert recorded == list(range(1, len(recorded) + 1)) and 1 <= len(recorded) < 6
    report = json.loads((tmp_path / "runs" / run["run_id"] / REPORT_NAME).read_text())
    assert report["current_epoch"] == recorded[-1]
    assert len(calls) - dropped[0] <= 3 * 9
    assert recorder_threads() == []


def test_every_row_is_in_the_store_before_the_checkpoint_row_and_at_the_end(
        store, train_run):
    run_id, outcome = train_run(epochs=4, save_interval=1, step_flush_interval=3)

    assert outcome.status == "finished"
    epochs = {e["epoch"]: e for e in store.epochs(run_id)}
    checkpoints = store.checkpoints(run_id)
    assert [c["epoch"] for c in checkpoints] == [1, 2, 3, 4]
    for c in checkpoints:
        assert epochs[c["epoch"]]["recorded_at"] <= c["created_at"]
    assert [s["step"] for s in store.steps(run_id)] == list(range(1, 4 * 9 + 1))
    assert store.get_run(run_id)["status"] == "finished"
    assert recorder_threads() == []


def test_the_report_is_rewritten_at_most_every_few_seconds_and_whole_at_close(
        tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "REPORT_SECONDS", 3600.0)
    store = Store.open(str(tmp_path / "runs.db"))
    run_id = store.create_run("report", {}, {"pairs": 1})
    run = Run(store, run_id=run_id, run_dir=tmp_path / "run", dataset_stats={"pairs": 1})
    report = tmp_path / "run" / REPORT_NAME

    def epoch(n: int) -> None:
        run.log({"loss": 1.0 / n, "lr": 1e-3})
        run.end_epoch()
        run._recorder._writer.drain()

    epoch(1)  # the first epoch's report at once: the run's folder shows it from the start
    assert json.loads(report.read_text())["current_epoch"] == 1
    epoch(2)
    epoch(3)
    assert json.loads(report.read_text())["current_epoch"] == 1  # not due yet
    assert [e["epoch"] for e in store.epochs(run_id)] == [1, 2, 3]  # the store is
    run.finish()
    written = json.loads(report.read_text())
    assert written["current_epoch"] == 3 and written["control_losses"] == [1.0, 0.5, 1 / 3]
    assert written["batch_losses"] == [1.0, 0.5, 1 / 3]
    assert written["dataset_stats"] == {"pairs": 1}
