"""`hlbd copy`: every row of a run, exactly, between any two stores; again is a no-op.

The source is a laptop's SQLite file holding real tiny runs (one resumed from an earlier
checkpoint, so it has superseded rows; one whose gradients went NaN/Inf; one imported
report with NaN and +-Infinity losses); the destination is the test's backend.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from helpers.backends import db_snapshot
from helpers.tiny import tiny_config

from hlbd import importer
from hlbd.cli import main
from hlbd.runner import resume_checkpoint, resume_run, start_run
from hlbd.store import Store
from hlbd.store.copy import _identity, _read_run, copy_runs, run_tables


def every_row(db: str) -> dict[str, list]:
    """Every row of every run table, keyed as copy compares them (store-local ids left
    out), NaN as the text "NaN" so that equal means equal to the last bit."""
    store = Store.open(db)
    try:
        with store.engine.connect() as conn:
            run_ids = [r[0] for r in conn.exec_driver_sql("SELECT run_id FROM runs")]
            out = {t.name: [] for t in run_tables()}
            for run_id in run_ids:
                rows = _read_run(conn, run_id)
                for table in run_tables():
                    out[table.name] += [repr(_identity(table, r)) + repr(
                        {k: v for k, v in r.items() if k != "id"}) for r in rows[table.name]]
    finally:
        store.close()
    return {name: sorted(rows) for name, rows in out.items()}


@pytest.fixture(scope="module")
def laptop(tmp_path_factory):
    """The source: a SQLite file with a resumed run, a NaN/Inf run and an imported one."""
    root = tmp_path_factory.mktemp("laptop")
    db = str(root / "laptop.db")
    store = Store.open(db)
    runs_root = root / "runs"
    resumed = start_run(tiny_config(epochs=3, save_interval=1, name="resumed"), store,
                        runs_root=runs_root, progress=False)
    resume_checkpoint(store, resumed.run_dir / "checkpoint_epoch_1.pt", epochs=3,
                      progress=False)
    wild = start_run(tiny_config(epochs=2, lr=1e8, max_grad_norm=0, weight_decay=0.0,
                                 name="wild"), store, runs_root=runs_root, progress=False)
    report = json.loads((resumed.run_dir / "experiment_report.json").read_text())
    old = root / "old" / "experiment_report.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"control_losses": [report["control_losses"][0], math.nan,
                                                  math.inf, -math.inf],
                               "learning_rates": [1e-3, 1e-3, 5e-4, 5e-4]}))
    (imported,) = importer.import_reports(store, old)
    store.close()
    return {"db": db, "root": root, "resumed": resumed.run_id, "wild": wild.run_id,
            "imported": imported.run_id}


@pytest.fixture
def source(laptop, tmp_path) -> str:
    """A copy of the laptop's file this test may change."""
    db = str(tmp_path / "laptop.db")
    shutil.copy(laptop["db"], db)  # closed: the file alone is the whole database
    return db


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_every_row_of_every_run_copies_exactly_and_back(laptop, source, db_url, databases,
                                                        tmp_path):
    result = cli("copy", source, db_url)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3 and all(": copied (" in line for line in lines)
    assert every_row(db_url) == every_row(source)

    back = databases.new(tmp_path / "back")
    assert cli("copy", db_url, back).exit_code == 0
    assert every_row(back) == every_row(source)
    databases.drop(back)

    # The values that must survive: superseded rows, NaN flags, +-Infinity, checkpoints.
    dst = Store.open(db_url)
    epochs = dst.epochs(laptop["resumed"], include_superseded=True)
    assert [(e["epoch"], e["segment"], e["superseded_by"]) for e in epochs] == [
        (1, 1, None), (2, 1, 2), (2, 2, None), (3, 1, 2), (3, 2, None)]
    imported = [e["loss"] for e in dst.epochs(laptop["imported"])]
    assert math.isnan(imported[1]) and imported[2:] == [math.inf, -math.inf]
    norms = [s["grad_norm"] for s in dst.steps(laptop["wild"])]
    assert not all(math.isfinite(n) for n in norms)
    src = Store.open(source)
    assert [c["path"] for c in dst.checkpoints(laptop["resumed"])] == [
        c["path"] for c in src.checkpoints(laptop["resumed"])]  # the files stay put
    dst.close()
    src.close()


def test_copying_again_does_nothing_and_says_so(source, db_url):
    assert cli("copy", source, db_url).exit_code == 0
    before = db_snapshot(db_url)
    again = cli("copy", source, db_url)
    assert again.exit_code == 0
    lines = again.output.strip().splitlines()
    assert len(lines) == 3 and all(line.endswith(": already copied (nothing new)")
                                   for line in lines)
    after = db_snapshot(db_url)
    if "checksums" in before:  # PostgreSQL: the rows themselves
        assert after == before
    else:  # SQLite: a no-op transaction may still touch the file; the rows may not
        assert after["counts"] == before["counts"]
    assert every_row(db_url) == every_row(source)


def test_a_run_that_went_on_brings_its_new_segments(laptop, source, db_url):
    copy_runs(source, db_url, [laptop["wild"][:8]])
    store = Store.open(source)
    resume_run(store, laptop["wild"], epochs=3, progress=False)  # segment 2, epoch 3
    store.close()

    (outcome,) = copy_runs(source, db_url, [laptop["wild"]])

    assert outcome.outcome == "updated"
    assert outcome.added["segments"] == 1 and outcome.added["epochs"] == 1
    assert outcome.changed["runs"] == 1  # status, heartbeat, config (the new total)
    assert every_row(db_url) == every_row_of(source, laptop["wild"])


def test_a_checkpoint_pruned_after_a_copy_is_marked_by_the_next_and_never_unmarked(
        laptop, source, db_url):
    run_id = laptop["resumed"]
    copy_runs(source, db_url, [run_id])
    store = Store.open(source)
    first = store.checkpoints(run_id)[0]
    store.mark_checkpoints_pruned(run_id, 2, [first["id"]])  # as --keep-checkpoints does
    store.close()

    (outcome,) = copy_runs(source, db_url, [run_id])

    assert outcome.outcome == "updated" and outcome.changed["checkpoints"] == 1
    assert every_row(db_url) == every_row_of(source, run_id)
    # A source without the mark (say, an older copy of the file) does not clear it.
    store = Store.open(source)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE checkpoints SET pruned_at = NULL")
    store.close()
    assert copy_runs(source, db_url, [run_id])[0].outcome == "already copied"
    dst = Store.open(db_url)
    assert dst.checkpoints(run_id)[0]["pruned_at"] is not None
    dst.close()


def every_row_of(db: str, run_id: str) -> dict[str, list]:
    rows = every_row(db)
    return {name: [r for r in rows[name] if run_id in r] for name in rows}


def test_a_run_with_a_different_history_in_the_destination_is_refused(laptop, source,
                                                                      db_url):
    copy_runs(source, db_url, [laptop["resumed"]])
    dst = Store.open(db_url)
    dst.record_epoch(laptop["resumed"], 2, {"epoch": 4, "loss": 1.0, "lr": 1e-3})
    dst.close()
    before = db_snapshot(db_url)

    result = cli("copy", source, db_url)

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert any(line.startswith(f"{laptop['resumed']}: refused: the destination's run has "
                               "a different history: a epochs row the source does not "
                               "have (segment 2, epoch 4)") for line in lines)
    assert lines[-1] == "Error: 1 of 3 run(s) refused"
    # The other two runs went in (each run is its own transaction); this one did not move.
    assert db_snapshot(db_url)["counts"]["epochs"] == before["counts"]["epochs"] + 2 + 4
    dst = Store.open(db_url)
    assert [e["epoch"] for e in dst.epochs(laptop["resumed"])] == [1, 2, 3, 4]
    dst.close()


def test_a_changed_recorded_value_is_refused_too(laptop, source, db_url):
    copy_runs(source, db_url, [laptop["imported"]])
    store = Store.open(source)
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE epochs SET lr = 0.5 WHERE run_id = "
                             f"'{laptop['imported']}' AND epoch = 1")
    store.close()
    (outcome,) = copy_runs(source, db_url, [laptop["imported"]])
    assert outcome.outcome == "refused"
    assert "epochs segment 1, epoch 1: lr is 0.001 there, 0.5 here" in outcome.reason


def test_bad_arguments_are_one_line_errors_and_copy_nothing(source, db_url, tmp_path):
    before = db_snapshot(source)
    for args, said in (([source, source], "source and destination are the same database"),
                       ([source, db_url, "nosuchrun"], "no run with id 'nosuchrun'"),
                       ([tmp_path / "missing.db", db_url], "no database at")):
        result = cli("copy", *args)
        assert result.exit_code == 1
        assert result.output.startswith("Error: ") and said in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert db_snapshot(source)["counts"] == before["counts"]
    assert not (tmp_path / "missing.db").exists()


def test_two_copies_of_the_same_runs_at_once_copy_each_run_once(source, db_url):
    procs = [subprocess.Popen([sys.executable, "-m", "hlbd", "copy", source, db_url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], outputs
    said = sorted(line.split(": ", 1)[1].split(" (")[0]
                  for out, _ in outputs for line in out.splitlines())
    assert said == ["already copied"] * 3 + ["copied"] * 3
    assert every_row(db_url) == every_row(source)
