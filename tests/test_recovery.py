"""No run is stuck: a damaged or missing checkpoint falls back to the next one that loads,
and a run with none resumes from the start, all in the same history."""

from __future__ import annotations

import logging

from click.testing import CliRunner
from helpers.backends import rows
from helpers.exact import exact_metrics
from helpers.procs import wait_until
from helpers.tiny import RESUMABLE, tiny_config, tiny_flags

from hlbd.checkpoint import checkpoint_path
from hlbd.cli import main
from hlbd.runner import resume_run, start_run


def run(store, root, **overrides):
    return start_run(tiny_config(RESUMABLE, **overrides), store, runs_root=root / "runs",
                     progress=False)


def test_a_damaged_newest_checkpoint_is_named_and_the_next_one_used(tmp_path, store,
                                                                    db_url, caplog):
    first = run(store, tmp_path, epochs=5, save_interval=2)  # checkpoints 2, 4, 5
    newest = checkpoint_path(tmp_path / "runs" / first.run_id, 5)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated (a disk that filled up)
    checkpoint_path(tmp_path / "runs" / first.run_id, 4).unlink()  # deleted by hand

    with caplog.at_level(logging.WARNING, logger="hlbd"):
        result = CliRunner().invoke(main, ["resume", "--db", db_url,
                                           "--run-id", first.run_id, "--epochs", "6",
                                           "--quiet"])

    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{newest}: not a loadable checkpoint" in w for w in warnings), warnings
    assert any("checkpoint_epoch_4.pt: checkpoint file not found" in w for w in warnings)
    segments = store.segments(first.run_id)
    assert [(s["segment"], s["start_epoch"], s["status"]) for s in segments] == [
        (1, 0, "finished"), (2, 2, "finished")]
    assert segments[1]["resumed_from"].endswith("checkpoint_epoch_2.pt")
    assert [(e["epoch"], e["superseded_by"]) for e in store.epochs(
        first.run_id, include_superseded=True) if e["superseded_by"]] == [
        (3, 2), (4, 2), (5, 2)]
    assert [(e["epoch"], e["segment"]) for e in store.epochs(first.run_id)] == [
        (1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 2)]


def test_a_run_with_no_checkpoint_that_loads_starts_again_in_the_same_history(
        tmp_path, store, caplog):
    straight = run(store, tmp_path, epochs=3)
    first = run(store, tmp_path, epochs=2)  # one checkpoint, at the end
    checkpoint_path(tmp_path / "runs" / first.run_id, 2).write_bytes(b"")

    with caplog.at_level(logging.WARNING, logger="hlbd"):
        outcome = resume_run(store, first.run_id, epochs=3, progress=False)

    assert outcome.status == "finished"
    assert any("starting it again from epoch 0" in r.getMessage() for r in caplog.records)
    assert [(s["start_epoch"], s["resumed_from"]) for s in store.segments(first.run_id)] == [
        (0, None), (0, None)]
    assert exact_metrics(store.epochs(first.run_id)) == exact_metrics(
        store.epochs(straight.run_id))
    assert len(store.epochs(first.run_id, include_superseded=True)) == 2 + 3


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path, store,
                                                                        db_url, procs):
    db = db_url
    proc = procs.hlbd("train", "--db", db, "--runs-dir", tmp_path / "runs",
                      *tiny_flags(RESUMABLE, dropout=0.0, epochs=60, save_interval=0),
                      "--name", "no-checkpoint")
    wait_until(lambda: rows(db, "SELECT 1 FROM epochs WHERE epoch >= 2"), proc)
    procs.kill_all()  # kill -9, before any checkpoint was written
    (run_id,) = [r[0] for r in rows(db, "SELECT run_id FROM runs")]
    assert store.checkpoints(run_id) == [] and store.get_run(run_id)[
        "display_status"] == "crashed"
    recorded = len(store.epochs(run_id))

    result = CliRunner().invoke(main, ["resume", "--db", str(db), "--run-id", run_id,
                                       "--epochs", "3", "--quiet"])

    assert result.exit_code == 0, result.output
    straight = start_run(tiny_config(RESUMABLE, epochs=3, dropout=0.0), store,
                         runs_root=tmp_path / "runs", progress=False)
    assert exact_metrics(store.epochs(run_id)) == exact_metrics(store.epochs(straight.run_id))
    assert [e["superseded_by"] for e in store.epochs(run_id, include_superseded=True)
            if e["segment"] == 1] == [2] * recorded
    steps = [s["step"] for s in store.steps(run_id)]
    assert steps == list(range(1, len(steps) + 1))
    assert [s["status"] for s in store.segments(run_id)] == ["crashed", "finished"]


def test_an_imported_run_without_a_loadable_checkpoint_is_refused_not_replayed(
        store, db_url):
    run_id = store.create_run("old", {}, {"old.json": 3}, source="imported",
                              status="imported")
    result = CliRunner().invoke(main, ["resume", "--db", db_url,
                                       "--run-id", run_id, "--epochs", "4"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: run {run_id} has no checkpoint to resume from, and no hlbd training "
        "config to start it again from; start a new run with `hlbd train`")
    assert len(store.segments(run_id)) == 1
