"""Clean logs and files: lines, not a redrawn bar, when stderr is not a terminal; files
made with the user's umask; --keep-checkpoints pruning older checkpoint files, marked in
the store, never the one a resume needs, whatever kills the process on the way."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.backends import sqlite_at
from helpers.procs import finish
from helpers.tiny import tiny_config, tiny_flags

from hlbd.checkpoint import load_checkpoint, prune_checkpoints
from hlbd.cli import main
from hlbd.runner import resume_checkpoint, resume_run, start_run
from hlbd.store import Store

LOUD = tiny_flags(quiet=False)  # the tiny model, progress as usual


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def checkpoint_rows(db, run_id: str) -> list[tuple]:
    """(segment, epoch, pruned) of every checkpoint row, in the order they were written."""
    conn = sqlite3.connect(db)
    try:
        return [(s, e, p is not None) for s, e, p in conn.execute(
            "SELECT segment, epoch, pruned_at FROM checkpoints WHERE run_id = ? ORDER BY id",
            (run_id,))]
    finally:
        conn.close()


# -- logs ------------------------------------------------------------------------------

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+)  loss \d+\.\d+  grad_norm \S+ \(max \S+\)  "
                        r"lr \S+  acc \S+  \d+\.\ds  val_loss \d+\.\d+ exact \d\.\d+$")


def test_a_log_file_gets_a_start_line_a_line_per_epoch_an_end_line_and_no_redraws(
        tmp_path, procs):
    db, runs, log = tmp_path / "runs.db", tmp_path / "runs", tmp_path / "train.log"
    with open(log, "w") as stderr:
        proc = procs.hlbd("train", "--db", db, "--runs-dir", runs, *LOUD, "--epochs", "3",
                          "--save-interval", "1", "--keep-checkpoints", "2", stderr=stderr)
        code, out, _ = finish(proc)
    assert code == 0, log.read_text()
    run_id = out.split()[1]
    text = log.read_text()

    assert "\r" not in text  # no bar redraws: a line is a line
    lines = [line for line in text.splitlines() if not line.startswith("anomaly [")]
    assert lines[0] == (f"run {run_id} segment 1: epochs 1-3 from scratch on cpu; 129 "
                        "pairs (14 held out), 9 batches of 16 per epoch")
    assert [EPOCH_LINE.match(line).groups() for line in lines[1:4]] == [
        ("1", "3"), ("2", "3"), ("3", "3")]
    assert re.fullmatch(rf"run {run_id}: finished, epochs 1-3 in \d+\.\ds; newest "
                        r"checkpoint checkpoint_epoch_3\.pt", lines[4])
    assert len(lines) == 5

    # --keep-checkpoints 2: the two newest files stay, the first is marked pruned.
    assert files(runs / run_id) == ["checkpoint_epoch_2.pt", "checkpoint_epoch_3.pt",
                                    "experiment_report.json"]
    assert checkpoint_rows(db, run_id) == [(1, 1, True), (1, 2, False), (1, 3, False)]
    shown = CliRunner().invoke(main, ["show", run_id, "--db", str(db)]).output
    listed = shown.split("\ncheckpoints\n")[1]
    states = re.findall(r"^(\d)\s+1\s+\S+ \S+\s+\d+\s+(pruned|on disk|missing)", listed,
                        re.MULTILINE)
    assert states == [("1", "pruned"), ("2", "on disk"), ("3", "on disk")]

    # The resume keeps the run's --keep-checkpoints; its log says where it started.
    with open(log, "w") as stderr:
        proc = procs.hlbd("resume", "--db", db, "--run-id", run_id, "--epochs", "5",
                          "--quiet", stderr=stderr)
        code, _, _ = finish(proc)
    assert code == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text
    assert text.splitlines()[0].startswith(
        f"run {run_id} segment 2: epochs 4-5 from the epoch 3 checkpoint on cpu")
    assert files(runs / run_id) == ["checkpoint_epoch_4.pt", "checkpoint_epoch_5.pt",
                                    "experiment_report.json"]
    assert checkpoint_rows(db, run_id) == [(1, 1, True), (1, 2, True), (1, 3, True),
                                           (2, 4, False), (2, 5, False)]
    store = Store.open_read_only(str(db))
    assert [c["epoch"] for c in store.checkpoint_candidates(run_id)] == [5, 4]
    assert [e["epoch"] for e in store.epochs(run_id)] == [1, 2, 3, 4, 5]
    store.close()


def test_on_a_terminal_the_progress_bar_is_drawn(tmp_path, procs):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = procs.hlbd("train", "--db", tmp_path / "runs.db", "--runs-dir", tmp_path / "runs",
                      *LOUD, "--epochs", "2", stderr=follower, stdout=subprocess.DEVNULL)
    os.close(follower)
    seen, deadline = b"", time.monotonic() + 180
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 1)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end closed: the process is gone
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(timeout=30) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert "%|" in text and "/18 [" in text  # tqdm's bar, 2 epochs of 9 batches
    assert "epoch 2/2" in text


def test_a_stderr_closed_before_the_start_does_not_fail_the_run(tmp_path, procs):
    db = tmp_path / "runs.db"
    argv = ["sh", "-c", 'exec "$0" -m hlbd "$@" 2>&-', sys.executable, "train", "--db",
            str(db), "--runs-dir", str(tmp_path / "runs"), *LOUD, "--epochs", "1"]
    code, out, _ = finish(procs.start(argv))
    assert code == 0, out
    store = Store.open_read_only(str(db))
    assert [r["status"] for r in store.list_runs()] == ["finished"]
    store.close()


# -- file modes ------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode, folder_mode", [(0o022, 0o644, 0o755),
                                                      (0o077, 0o600, 0o700)],
                         ids=["umask 022", "umask 077"])
def test_files_are_created_with_the_users_umask(tmp_path, procs, umask, mode, folder_mode):
    db, runs = tmp_path / "runs.db", tmp_path / "runs"
    argv = ["sh", "-c", f'umask {umask:03o} && exec "$0" -m hlbd "$@"', sys.executable,
            "train", "--db", str(db), "--runs-dir", str(runs), *tiny_flags(epochs=1)]
    code, _, err = finish(procs.start(argv))
    assert code == 0, err
    (run_dir,) = runs.iterdir()
    assert files(run_dir) == ["checkpoint_epoch_1.pt", "experiment_report.json"]
    for path in run_dir.iterdir():  # written atomically (a temp file renamed)
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert stat.S_IMODE(run_dir.stat().st_mode) == folder_mode
    assert stat.S_IMODE(db.stat().st_mode) == mode


# -- pruning ---------------------------------------------------------------------------

def test_a_missing_or_damaged_file_is_not_counted_so_the_newest_good_one_stays(
        tmp_path, caplog):
    db = str(tmp_path / "runs.db")
    store = Store.open(db)
    run = start_run(tiny_config(epochs=3, save_interval=1, keep_checkpoints=0), store,
                    runs_root=tmp_path / "runs", progress=False)
    newest = run.run_dir / "checkpoint_epoch_3.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # damaged after it was recorded

    deleted = prune_checkpoints(store, run.run_id, 1, keep=1)

    assert deleted == [run.run_dir / "checkpoint_epoch_1.pt"]
    assert checkpoint_rows(db, run.run_id) == [(1, 1, True), (1, 2, False), (1, 3, False)]
    resumed = resume_run(store, run.run_id, epochs=4, progress=False)
    assert "checkpoint_epoch_3.pt: not a loadable checkpoint" in caplog.text
    assert resumed.status == "finished"
    assert [e["epoch"] for e in store.epochs(run.run_id)] == [1, 2, 3, 4]
    store.close()


def test_a_resume_from_a_relative_path_records_it_absolute_so_pruning_knows_the_file(
        tmp_path, monkeypatch):
    store = Store.open(str(tmp_path / "runs.db"))
    run = start_run(tiny_config(epochs=2, save_interval=1, keep_checkpoints=1), store,
                    runs_root=tmp_path / "runs", progress=False)
    monkeypatch.chdir(run.run_dir)

    resume_checkpoint(store, "checkpoint_epoch_2.pt", epochs=3, progress=False)

    assert store.segments(run.run_id)[1]["resumed_from"] == str(
        run.run_dir / "checkpoint_epoch_2.pt")
    assert files(run.run_dir) == ["checkpoint_epoch_3.pt", "experiment_report.json"]
    assert [c["epoch"] for c in store.checkpoint_candidates(run.run_id)] == [3]
    store.close()


# A training process that kills itself (SIGKILL) at one point of its third checkpoint:
# written but not recorded, recorded but not pruned, or marked pruned but not deleted.
KILLED_AT = """
import os, signal, sys
from hlbd.cli import main
from hlbd.store import Store

point, args = sys.argv[1], sys.argv[2:]
record, mark = Store.record_checkpoint, Store.mark_checkpoints_pruned
marks = []

def record_checkpoint(self, run_id, segment, epoch, *rest):
    if (point, epoch) == ("written", 3):
        os.kill(os.getpid(), signal.SIGKILL)
    record(self, run_id, segment, epoch, *rest)
    if (point, epoch) == ("recorded", 3):
        os.kill(os.getpid(), signal.SIGKILL)

def mark_checkpoints_pruned(self, run_id, segment, ids):
    mark(self, run_id, segment, ids)
    marks.extend(ids)
    if point == "marked" and len(marks) == 2:  # epoch 2's row, at epoch 3's checkpoint
        os.kill(os.getpid(), signal.SIGKILL)

Store.record_checkpoint, Store.mark_checkpoints_pruned = record_checkpoint, mark_checkpoints_pruned
main(args)
"""


@pytest.mark.parametrize("point, files_left, rows", [
    ("written", [2, 3], [(1, 1, True), (1, 2, False)]),
    ("recorded", [2, 3], [(1, 1, True), (1, 2, False), (1, 3, False)]),
    ("marked", [2, 3], [(1, 1, True), (1, 2, True), (1, 3, False)]),
], ids=["written", "recorded", "marked"])
def test_a_kill_between_writing_and_pruning_loses_nothing(tmp_path, procs, caplog, point,
                                                          files_left, rows):
    db, runs = tmp_path / "runs.db", tmp_path / "runs"
    proc = procs.python(KILLED_AT, point, "train", "--db", db, "--runs-dir", runs,
                        *tiny_flags(epochs=5, save_interval=1, keep_checkpoints=1))
    code, out, err = finish(proc)
    assert code == -signal.SIGKILL, err
    run_id = out.split()[1]
    assert files(runs / run_id) == [f"checkpoint_epoch_{e}.pt" for e in files_left] + [
        "experiment_report.json"]
    assert checkpoint_rows(db, run_id) == rows
    store = Store.open(str(db))
    newest = store.newest_checkpoint(run_id)  # what a resume starts from: it loads
    assert load_checkpoint(newest["path"])["epoch"] == newest["epoch"] == rows[-1][1]

    resumed = resume_run(store, run_id, progress=False)

    assert resumed.status == "finished"
    assert "cannot resume" not in caplog.text  # it never tried a pruned file
    assert [e["epoch"] for e in store.epochs(run_id)] == [1, 2, 3, 4, 5]
    # The leftovers went with the resume's first pruning: the newest file alone stays.
    assert files(runs / run_id) == ["checkpoint_epoch_5.pt", "experiment_report.json"]
    assert [pruned for _, epoch, pruned in checkpoint_rows(db, run_id)] == [
        True] * (len(checkpoint_rows(db, run_id)) - 1) + [False]
    store.close()


# -- flags and schema ------------------------------------------------------------------

@pytest.mark.parametrize("command_line", [
    ["train", *tiny_flags(), "--keep-checkpoints", "-1"],
    ["train", "--resume", "nowhere.pt", "--keep-checkpoints", "-2"],
    ["resume", "--run-id", "abc", "--keep-checkpoints", "-1"],
], ids=["train", "train --resume", "resume"])
def test_a_negative_keep_checkpoints_is_one_line_before_anything_exists(tmp_path,
                                                                        command_line):
    result = CliRunner().invoke(main, [*command_line, "--db", str(tmp_path / "runs.db")],
                                env={"HLBD_RUNS_DIR": str(tmp_path / "runs")})
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: --keep-checkpoints must be >= 0 (0: keep all), not {command_line[-1]}"]
    assert list(tmp_path.iterdir()) == []


def test_migration_0006_adds_pruned_at_and_keeps_every_checkpoint_row(tmp_path):
    db = tmp_path / "old.db"
    sqlite_at(db, "0005")
    conn = sqlite3.connect(db)
    conn.executescript(
        "INSERT INTO runs (run_id, name, status, created_at, config, dataset_stats, source) "
        "VALUES ('old', 'o', 'finished', '2026-01-01', '{}', '{}', 'hlbd');"
        "INSERT INTO checkpoints (run_id, segment, epoch, path, created_at, size_bytes) "
        "VALUES ('old', 1, 5, '/x/checkpoint_epoch_5.pt', '2026-01-01', 10);")
    conn.close()

    assert CliRunner().invoke(main, ["db", "upgrade", "--db", str(db)]).exit_code == 0

    store = Store.open_read_only(str(db))
    (row,) = store.checkpoints("old")
    assert (row["epoch"], row["size_bytes"], row["pruned_at"]) == (5, 10, None)
    store.close()
