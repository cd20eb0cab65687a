"""Resume continues a run exactly, in the same history: numbers, store rows, status, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers.backends import dump, rows
from helpers.exact import EXACT_COLUMNS, exact_metrics
from helpers.procs import kill_hard, spawn_hlbd, wait_until
from helpers.tiny import RESUMABLE, tiny_config, tiny_flags

from hlbd.checkpoint import checkpoint_path, load_checkpoint
from hlbd.cli import main
from hlbd.report import REPORT_NAME
from hlbd.runner import resume_checkpoint, resume_run, start_run
from hlbd.store import live_status, utcnow


@pytest.fixture
def db(db_url) -> str:
    return db_url


@pytest.fixture
def runs_root(tmp_path) -> Path:
    return tmp_path / "runs"


def run(store, runs_root, **overrides):
    return start_run(tiny_config(RESUMABLE, **overrides), store, runs_root=runs_root,
                     progress=False)


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def stop_at_first_batch():
    """A stop request that comes once the segment has begun (a stop asked for before
    it begins means nothing is recorded at all)."""
    polls = iter([False])
    return lambda: next(polls, True)


# -- exactness --------------------------------------------------------------------------

# t_0=2, t_mult=2: cycles are epochs 1-2, 3-6, 7-14. Epoch 2 ends a cycle (the next
# epoch restarts the LR); epoch 3 is inside the 3-6 cycle.
@pytest.mark.parametrize("stop_at", [2, 3], ids=["at-a-restart", "mid-cycle"])
def test_resumed_run_has_the_straight_runs_numbers(store, runs_root, stop_at):
    straight = run(store, runs_root, epochs=6, grad_accum=2, name="straight")
    split = run(store, runs_root, epochs=stop_at, grad_accum=2, name="split")

    outcome = resume_run(store, split.run_id, epochs=6, progress=False)

    assert outcome.run_id == split.run_id and outcome.status == "finished"
    assert outcome.last_epoch == 6
    expected, resumed = store.epochs(straight.run_id), store.epochs(split.run_id)
    assert exact_metrics(resumed) == exact_metrics(expected)
    assert len({e["lr"] for e in resumed}) >= 4  # the schedule restarted and moved on
    assert [e["segment"] for e in resumed] == [1] * stop_at + [2] * (6 - stop_at)
    step_numbers = [(s["step"], s["epoch"], s["loss"], s["grad_norm"], s["lr"])
                    for s in store.steps(split.run_id)]
    assert step_numbers == [(s["step"], s["epoch"], s["loss"], s["grad_norm"], s["lr"])
                            for s in store.steps(straight.run_id)]
    final = {r: load_checkpoint(checkpoint_path(runs_root / r, 6))
             for r in (straight.run_id, split.run_id)}
    for name, tensor in final[straight.run_id]["model"].items():
        assert torch.equal(tensor, final[split.run_id]["model"][name]), name
    segments = store.segments(split.run_id)
    assert [(s["segment"], s["start_epoch"], s["status"]) for s in segments] == [
        (1, 0, "finished"), (2, stop_at, "finished")]
    assert segments[1]["resumed_from"] == str(checkpoint_path(runs_root / split.run_id,
                                                              stop_at))
    assert store.get_run(split.run_id)["config"]["epochs"] == 6  # the new total


def test_random_state_restore_is_what_makes_a_dropout_resume_exact(store, runs_root,
                                                                   tmp_path):
    straight = run(store, runs_root, epochs=4)
    split = run(store, runs_root, epochs=3)
    state = load_checkpoint(checkpoint_path(runs_root / split.run_id, 3))
    del state["rng"]
    torch.save(state, tmp_path / "no_rng.pt")

    resume_checkpoint(store, tmp_path / "no_rng.pt", epochs=4, progress=False)

    without_rng, expected = store.epochs(split.run_id)[3], store.epochs(straight.run_id)[3]
    assert without_rng["lr"] == expected["lr"]
    assert without_rng["loss"] != expected["loss"]


def test_report_after_resume_holds_the_whole_history(store, runs_root, db):
    split = run(store, runs_root, epochs=3)

    result = cli("resume", "--db", str(db), "--run-id", split.run_id, "--epochs", "5",
                 "--save-interval", "1", "--quiet")

    assert result.exit_code == 0, result.output
    assert [(c["epoch"], c["segment"]) for c in store.checkpoints(split.run_id)] == [
        (3, 1), (4, 2), (5, 2)]

    report = json.loads((runs_root / split.run_id / REPORT_NAME).read_text())
    epochs = store.epochs(split.run_id)
    assert report["current_epoch"] == 5
    assert report["control_losses"] == [e["loss"] for e in epochs]
    assert report["grad_norms"] == [e["grad_norm"] for e in epochs]
    assert report["learning_rates"] == [e["lr"] for e in epochs]
    assert report["batch_losses"] == [s["loss"] for s in store.steps(split.run_id)]


# -- history semantics -----------------------------------------------------------------

def test_resume_from_an_earlier_checkpoint_file_supersedes_later_epochs(
        store, runs_root, db):
    straight = run(store, runs_root, epochs=6)
    first = run(store, runs_root, epochs=5, save_interval=2)
    old_rows = {e["epoch"]: e for e in store.epochs(first.run_id)}
    old_steps = store.steps(first.run_id)

    result = cli("train", "--db", str(db), "--resume",
                 str(runs_root / first.run_id / "checkpoint_epoch_2.pt"), "--epochs", "6",
                 "--quiet")

    assert result.exit_code == 0, result.output
    assert f"run_id: {first.run_id}" in result.output
    effective = store.epochs(first.run_id)
    assert [e["epoch"] for e in effective] == [1, 2, 3, 4, 5, 6]
    assert [e["segment"] for e in effective] == [1, 1, 2, 2, 2, 2]
    assert exact_metrics(effective) == exact_metrics(store.epochs(straight.run_id))
    kept = [e for e in store.epochs(first.run_id, include_superseded=True)
            if e["superseded_by"] is not None]
    assert [(e["epoch"], e["segment"], e["superseded_by"]) for e in kept] == [
        (3, 1, 2), (4, 1, 2), (5, 1, 2)]
    for e in kept:  # kept as recorded, not rewritten
        assert e["loss"] == old_rows[e["epoch"]]["loss"]
        assert e["recorded_at"] == old_rows[e["epoch"]]["recorded_at"]
    kept_steps = [s for s in store.steps(first.run_id, include_superseded=True)
                  if s["superseded_by"] is not None]
    assert [(s["step"], s["epoch"], s["segment"]) for s in kept_steps] == [
        (s["step"], s["epoch"], 1) for s in old_steps if s["epoch"] > 2]
    assert {s["superseded_by"] for s in kept_steps} == {2}
    view = rows(db, "SELECT epoch, segment FROM epoch_metrics WHERE run_id = :run_id "
                     "ORDER BY epoch", run_id=first.run_id)
    assert view == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 2)]


def test_resume_after_a_resume_that_stopped_before_its_first_checkpoint(store, runs_root):
    """The newest checkpoint on the effective history is the one resumed from, not a
    later checkpoint of the superseded segment."""
    straight = run(store, runs_root, epochs=5)
    first = run(store, runs_root, epochs=5, save_interval=2)
    early = runs_root / first.run_id / "checkpoint_epoch_2.pt"
    stopped = resume_checkpoint(store, early, epochs=5, should_stop=stop_at_first_batch(),
                                progress=False)
    assert stopped.status == "interrupted" and stopped.last_epoch == 2
    assert store.newest_checkpoint(first.run_id)["epoch"] == 2

    resume_run(store, first.run_id, progress=False)

    assert [s["start_epoch"] for s in store.segments(first.run_id)] == [0, 2, 2]
    assert exact_metrics(store.epochs(first.run_id)) == exact_metrics(
        store.epochs(straight.run_id))


def test_older_tools_checkpoint_starts_an_imported_run_in_one_history(
        store, runs_root, db, tmp_path):
    straight = run(store, runs_root, epochs=5)
    source = run(store, runs_root, epochs=3)
    state = load_checkpoint(checkpoint_path(runs_root / source.run_id, 3))
    for key in ("run_id", "format", "format_version", "segment", "global_step"):
        del state[key]
    old = tmp_path / "old_tool.pt"
    torch.save(state, old)

    result = cli("train", "--db", str(db), "--runs-dir", str(runs_root), "--resume",
                 str(old), "--epochs", "5", "--name", "legacy", "--quiet")

    assert result.exit_code == 0, result.output
    (imported,) = [r for r in store.list_runs() if r["name"] == "legacy"]
    assert imported["source"] == "imported"
    assert imported["extra"] == {"imported_from": str(old)}
    assert Path(imported["run_dir"]).parent == runs_root
    epochs = store.epochs(imported["run_id"])
    first_segment = epochs[:3]
    assert [e["segment"] for e in epochs] == [1, 1, 1, 2, 2]
    assert [e["loss"] for e in first_segment] == state["history"]["control_losses"]
    assert [e["grad_norm"] for e in first_segment] == state["history"]["grad_norms"]
    assert [e["lr"] for e in first_segment] == state["history"]["learning_rates"]
    # The older checkpoint carried no more than these lists: the rest stays missing.
    assert all(e["token_accuracy"] is None and e["grad_norm_max"] is None
               for e in first_segment)
    assert exact_metrics(epochs[3:]) == exact_metrics(store.epochs(straight.run_id)[3:])


def test_imported_run_stopped_before_its_first_checkpoint_resumes_from_the_old_file(
        store, runs_root, tmp_path):
    straight = run(store, runs_root, epochs=5)
    source = run(store, runs_root, epochs=3)
    state = load_checkpoint(checkpoint_path(runs_root / source.run_id, 3))
    del state["run_id"]
    old = tmp_path / "old_tool.pt"
    torch.save(state, old)
    stopped = resume_checkpoint(store, old, epochs=5, runs_root=runs_root,
                                should_stop=stop_at_first_batch(), progress=False)
    assert stopped.status == "interrupted" and not store.checkpoints(stopped.run_id)

    resume_run(store, stopped.run_id, progress=False)

    assert [s["resumed_from"] for s in store.segments(stopped.run_id)] == [
        None, str(old), str(old)]
    epochs = store.epochs(stopped.run_id)
    assert exact_metrics(epochs[3:]) == exact_metrics(store.epochs(straight.run_id)[3:])


# -- crash, kill, Ctrl-C ---------------------------------------------------------------

def test_killed_run_shows_crashed_and_resumes_with_each_epoch_once(db, runs_root, store):
    proc = spawn_hlbd("train", "--db", str(db), "--runs-dir", str(runs_root),
                      *tiny_flags(dropout=0.2, epochs=60, seed=5, save_interval=3,
                                  step_flush_interval=1), "--name", "killed")
    beats = []

    def one_epoch_past_a_checkpoint():
        found = rows(db, "SELECT max(epoch), (SELECT heartbeat_at FROM runs) FROM epochs")
        epoch, beat = found[0] if found else (None, None)
        beats.append(beat)
        return epoch if epoch and epoch > 3 and epoch % 3 == 1 else None

    wait_until(one_epoch_past_a_checkpoint, proc)
    kill_hard(proc)

    (run_id,) = [r[0] for r in rows(db, "SELECT run_id FROM runs")]
    listing = cli("runs", "--db", str(db))
    assert listing.exit_code == 0
    assert "crashed" in next(line for line in listing.output.splitlines() if run_id in line)
    assert len({b for b in beats if b}) > 1  # the heartbeat moved while it ran
    checkpoint = store.newest_checkpoint(run_id)["epoch"]
    recorded = max(e["epoch"] for e in store.epochs(run_id))
    assert recorded > checkpoint
    steps_before = len(store.steps(run_id))

    result = cli("resume", "--db", str(db), "--run-id", run_id[:8], "--epochs",
                 str(recorded + 2), "--quiet")

    assert result.exit_code == 0, result.output
    effective = store.epochs(run_id)
    assert [e["epoch"] for e in effective] == list(range(1, recorded + 3))
    assert {e["segment"] for e in effective if e["epoch"] > checkpoint} == {2}
    superseded = [e for e in store.epochs(run_id, include_superseded=True)
                  if e["superseded_by"] is not None]
    assert [(e["epoch"], e["segment"], e["superseded_by"]) for e in superseded] == [
        (epoch, 1, 2) for epoch in range(checkpoint + 1, recorded + 1)]
    # The killed segment and the resumed one trained the same epochs to the same numbers.
    again = {e["epoch"]: e for e in effective}
    for e in superseded:
        assert tuple(e[c] for c in EXACT_COLUMNS) == tuple(
            again[e["epoch"]][c] for c in EXACT_COLUMNS)
    steps = store.steps(run_id)
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert len(store.steps(run_id, include_superseded=True)) > steps_before
    assert [(s["segment"], s["status"]) for s in store.segments(run_id)] == [
        (1, "crashed"), (2, "finished")]
    assert store.get_run(run_id)["display_status"] == "finished"
    report = json.loads((runs_root / run_id / REPORT_NAME).read_text())
    assert report["control_losses"] == [e["loss"] for e in effective]


def test_ctrl_c_saves_a_checkpoint_marks_interrupted_and_resume_is_exact(
        db, runs_root, store):
    proc = spawn_hlbd("train", "--db", str(db), "--runs-dir", str(runs_root),
                      *tiny_flags(RESUMABLE, epochs=60, save_interval=0), "--name", "ctrl-c")
    wait_until(lambda: rows(db, "SELECT 1 FROM epochs WHERE epoch >= 2"), proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)

    assert proc.returncode == 130
    (run_id,) = [r[0] for r in rows(db, "SELECT run_id FROM runs")]
    run_ = store.get_run(run_id)
    assert run_["status"] == run_["display_status"] == "interrupted"
    epochs = store.epochs(run_id)
    last = epochs[-1]["epoch"]
    # --save-interval 0 saves only at the end: this checkpoint is the Ctrl-C one, and it
    # holds the state right after the last finished epoch.
    assert [(c["epoch"], c["segment"]) for c in store.checkpoints(run_id)] == [(last, 1)]
    state = load_checkpoint(checkpoint_path(runs_root / run_id, last))
    assert state["epoch"] == last and state["run_id"] == run_id
    assert state["history"]["control_losses"] == [e["loss"] for e in epochs]
    assert state["history"]["learning_rates"] == [e["lr"] for e in epochs]
    assert state["global_step"] == sum(e["steps"] for e in epochs)
    assert f"hlbd resume --run-id {run_id}" in out

    resume_run(store, run_id, epochs=last + 2, progress=False)

    straight = start_run(tiny_config(RESUMABLE, epochs=last + 2), store, runs_root=runs_root,
                         progress=False)
    assert exact_metrics(store.epochs(run_id)) == exact_metrics(
        store.epochs(straight.run_id))


KILL_MID_WRITE = textwrap.dedent("""
    import io, sys, time
    from pathlib import Path
    import torch
    from hlbd.checkpoint import load_checkpoint
    from hlbd.fileio import write_atomically

    path = Path(sys.argv[1])
    state = load_checkpoint(path)
    buffer = io.BytesIO()
    torch.save({**state, "epoch": state["epoch"] + 1}, buffer)
    data = buffer.getvalue()

    def write(f):
        f.write(data[: len(data) // 2])
        f.flush()
        print("half written", flush=True)
        time.sleep(600)

    write_atomically(path, write)
""")


def test_kill_while_writing_a_checkpoint_leaves_the_previous_one(store, runs_root):
    first = run(store, runs_root, epochs=3)
    path = checkpoint_path(runs_root / first.run_id, 3)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILL_MID_WRITE, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half written"
    (partial,) = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    kill_hard(proc)

    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 3
    assert 0 < partial.stat().st_size < len(before)
    assert not partial.name.startswith(path.name)
    resumed = resume_run(store, first.run_id, epochs=4, progress=False)
    assert resumed.status == "finished"
    assert not partial.exists()  # the resume cleared the killed write's temp file


# -- status ----------------------------------------------------------------------------

def test_live_status_tells_crashed_from_stale_from_running():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = utcnow()
    base = {"status": "running", "created_at": now, "heartbeat_at": now}
    here = socket.gethostname()
    assert live_status({**base, "hostname": here, "pid": os.getpid()}) == "running"
    assert live_status({**base, "hostname": here, "pid": dead.pid}) == "crashed"
    assert live_status({**base, "hostname": "elsewhere", "pid": 1}) == "running"
    assert live_status({**base, "hostname": "elsewhere", "pid": 1},
                       now=now + timedelta(minutes=3)) == "stale"
    assert live_status({**base, "status": "interrupted", "pid": dead.pid}) == "interrupted"


# -- bad input: one line, exit 1, store untouched --------------------------------------

@pytest.fixture
def finished(store, runs_root):
    """A finished 3-epoch run with checkpoints at 2 and 3."""
    return run(store, runs_root, epochs=3, save_interval=2)


def refused(db: str | Path, *args: str) -> str:
    """Invoke the CLI, expect a one-line error and an untouched store; the line."""
    before = dump(db)
    result = cli(*args, "--db", str(db), "--quiet")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert dump(db) == before
    return lines[0]


def test_unknown_run_id_is_refused(db, finished):
    assert "no run with id 'f00f00'" in refused(db, "resume", "--run-id", "f00f00")


def test_ambiguous_prefix_lists_the_candidates(db, store, finished):
    for suffix in ("1", "2"):
        store.create_run("other", {}, {}, run_id="abc" + suffix * 29, status="finished")
    line = refused(db, "resume", "--run-id", "abc")
    assert "ambiguous" in line and "abc" + "1" * 29 in line and "abc" + "2" * 29 in line


def test_run_without_a_checkpoint_is_refused(db, store, finished):
    run_id = store.create_run("bare", {}, {}, status="finished")
    assert f"run {run_id} has no checkpoint" in refused(db, "resume", "--run-id", run_id)


def _truncated(path: Path, target: Path) -> None:
    target.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _plain_tensor(path: Path, target: Path) -> None:
    torch.save(torch.zeros(3), target)


def _text(path: Path, target: Path) -> None:
    target.write_text("epoch 3, loss 0.5\n")


def _wrong_types(path: Path, target: Path) -> None:
    state = load_checkpoint(path)
    torch.save({**state, "history": [1, 2, 3]}, target)


def _foreign_tensors(path: Path, target: Path) -> None:
    state = load_checkpoint(path)
    torch.save({**state, "config": {**state["config"], "d_model": 64, "n_heads": 2}}, target)


def _no_specials(path: Path, target: Path) -> None:
    torch.save({**load_checkpoint(path), "vocab": ["a", "b"]}, target)


def _no_schedule(path: Path, target: Path) -> None:
    torch.save({**load_checkpoint(path), "scheduler": {}}, target)


@pytest.mark.parametrize("make, message", [
    (None, "checkpoint file not found"),
    (_truncated, "not a loadable checkpoint"),
    (_plain_tensor, "not an hlbd checkpoint (holds a Tensor, not a dict)"),
    (_text, "not a loadable checkpoint"),
    (_wrong_types, "not an hlbd checkpoint (malformed history)"),
    (_foreign_tensors, "checkpoint does not restore into the model its config describes: "
                       + "Error(s) in loading state_dict for CausalTransformer: size mismatch"),
    (_no_specials, "its vocabulary lacks the special token '[PAD]'"),
    (_no_schedule, "its scheduler state lacks T_0, T_cur, T_i"),
], ids=["missing", "truncated", "plain-tensor", "text", "malformed", "foreign-tensors",
        "no-specials", "no-schedule"])
def test_bad_checkpoint_file_is_refused(db, runs_root, tmp_path, finished, make, message):
    target = tmp_path / "bad.pt"
    if make is not None:
        make(checkpoint_path(runs_root / finished.run_id, 3), target)
    line = refused(db, "train", "--resume", str(target), "--epochs", "5")
    assert f"{target}: {message}" in line


@pytest.mark.parametrize("flags, shown", [
    (["--d-model", "64"], "--d-model 64 (checkpoint: 32)"),
    (["--lr", "0.1"], "--lr 0.1 (checkpoint: 0.002)"),
    (["--seed", "8"], "--seed 8 (checkpoint: 7)"),
])
def test_flags_that_contradict_the_checkpoint_are_refused(db, runs_root, finished, flags,
                                                         shown):
    path = checkpoint_path(runs_root / finished.run_id, 3)
    line = refused(db, "train", "--resume", str(path), "--epochs", "5", *flags)
    assert "flags contradict the checkpoint's config" in line and shown in line


def test_contradicting_flags_on_an_older_tools_checkpoint_import_nothing(
        db, runs_root, tmp_path, finished):
    state = load_checkpoint(checkpoint_path(runs_root / finished.run_id, 3))
    del state["run_id"]
    old = tmp_path / "old_tool.pt"
    torch.save(state, old)
    assert "--d-ff 128" in refused(db, "train", "--resume", str(old), "--d-ff", "128")


def test_epochs_not_beyond_the_checkpoint_are_refused(db, finished):
    line = refused(db, "resume", "--run-id", finished.run_id, "--epochs", "3")
    assert "pass --epochs N with N > 3" in line
    line = refused(db, "resume", "--run-id", finished.run_id)
    assert "the run's total is 3" in line


def test_checkpoint_on_a_superseded_segment_is_refused(db, store, runs_root, finished):
    first_segment = runs_root / "first_segment_epoch_3.pt"
    first_segment.write_bytes(checkpoint_path(runs_root / finished.run_id, 3).read_bytes())
    resume_checkpoint(store, checkpoint_path(runs_root / finished.run_id, 2), epochs=4,
                      progress=False)  # epoch 3 of the first segment is superseded now
    line = refused(db, "train", "--resume", str(first_segment), "--epochs", "6")
    assert "was superseded by a later resume" in line


def test_checkpoint_of_a_run_in_another_store_is_refused(tmp_path, runs_root, finished,
                                                         databases):
    other = databases.new(tmp_path / "other")
    cli("db", "upgrade", "--db", str(other))
    path = checkpoint_path(runs_root / finished.run_id, 3)
    line = refused(other, "train", "--resume", str(path), "--epochs", "5")
    assert f"belongs to run {finished.run_id}, which is not in" in line


def test_run_still_written_by_a_live_process_is_refused_unless_forced(db, runs_root, store):
    # Small batches: a longer epoch between its writes.
    proc = spawn_hlbd("train", "--db", str(db), "--runs-dir", str(runs_root),
                      *tiny_flags(dropout=0.2, batch_size=4, epochs=500, save_interval=1),
                      "--name", "live")
    try:
        # Pause it right after a checkpoint row: its next write is an epoch away.
        wait_until(lambda: rows(db, "SELECT 1 FROM checkpoints WHERE epoch = "
                                     "(SELECT max(epoch) FROM epochs)"), proc)
        proc.send_signal(signal.SIGSTOP)
        (run_id,) = [r[0] for r in rows(db, "SELECT run_id FROM runs")]

        line = refused(db, "resume", "--run-id", run_id, "--epochs", "600")
        assert f"is still being written by process {proc.pid}" in line
        assert "--force" in line

        target = store.newest_checkpoint(run_id)["epoch"] + 1
        forced = cli("resume", "--db", str(db), "--run-id", run_id, "--epochs", str(target),
                     "--force", "--quiet")
        assert forced.exit_code == 0, forced.output
        assert [s["status"] for s in store.segments(run_id)] == ["crashed", "finished"]
    finally:
        kill_hard(proc)

