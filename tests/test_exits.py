"""Every way a training process ends leaves a true status: SIGTERM stops like Ctrl-C, a
stop before the run exists records nothing, a closed stdout does not strand a run."""

from __future__ import annotations

import errno
import os
import signal

import pytest
from helpers.backends import rows
from helpers.procs import finish, wait_until
from helpers.tiny import tiny_flags

from hlbd.checkpoint import checkpoint_path, load_checkpoint
from hlbd.store import Store


@pytest.fixture
def db(tmp_path):
    return tmp_path / "runs.db"


def test_sigterm_checkpoints_the_last_finished_epoch_and_marks_interrupted(db, tmp_path,
                                                                           procs):
    runs = tmp_path / "runs"
    proc = procs.hlbd("train", "--db", db, "--runs-dir", runs,
                      *tiny_flags(batch_size=4, epochs=200, save_interval=0),
                      "--name", "preempted")
    wait_until(lambda: rows(db, "SELECT 1 FROM epochs WHERE epoch >= 2"), proc)
    proc.send_signal(signal.SIGTERM)  # what a scheduler, `docker stop` or `kill` sends
    code, out, err = finish(proc)

    assert code == 143
    assert "stopping (SIGTERM)" in err
    store = Store.open_read_only(str(db))
    (run,) = store.list_runs()
    assert run["status"] == run["display_status"] == "interrupted"
    last = store.epochs(run["run_id"])[-1]["epoch"]
    # --save-interval 0: the only checkpoint is the one the stop wrote, at the last epoch.
    assert [c["epoch"] for c in store.checkpoints(run["run_id"])] == [last]
    state = load_checkpoint(checkpoint_path(runs / run["run_id"], last))
    assert state["epoch"] == last and state["run_id"] == run["run_id"]
    assert f"continue with: hlbd resume --run-id {run['run_id']}" in out


def _reader_attached(fifo) -> bool:
    """Whether a process has the FIFO open for reading (it is blocked reading it)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)
    return True


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_a_stop_while_loading_the_dataset_creates_no_run(db, tmp_path, procs, sig, code):
    # A dataset that is still being read: a FIFO nobody writes to yet.
    fifo = tmp_path / "slow_dataset.json"
    os.mkfifo(fifo)
    proc = procs.hlbd("train", "--db", db, "--runs-dir", tmp_path / "runs", *tiny_flags(),
                      "--dataset", fifo)
    wait_until(lambda: _reader_attached(fifo), proc)
    proc.send_signal(sig)
    got, out, err = finish(proc, timeout=60)

    assert got == code
    assert out == ""
    assert err.strip().splitlines()[-1] == (
        "stopped before the run started: nothing was recorded")
    assert rows(db, "SELECT count(*) FROM runs") == [(0,)]
    assert not (tmp_path / "runs").exists()


def test_a_closed_stdout_does_not_stop_or_strand_the_run(db, tmp_path, procs):
    """`hlbd train | head -1`: the reader goes after the run id; the run goes on."""
    proc = procs.hlbd("train", "--db", db, "--runs-dir", tmp_path / "runs",
                      *tiny_flags(epochs=2))
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    code = proc.wait(timeout=180)
    err = proc.stderr.read()

    run_id = first.removeprefix("run_id: ").strip()
    assert code == 141  # 128 + SIGPIPE, as for any writer whose reader went away
    assert f"the run is recorded: finished: run {run_id} at epoch 2" in err
    assert "Traceback" not in err
    assert rows(db, "SELECT status FROM runs WHERE run_id = :run", run=run_id) == [
        ("finished",)]
    assert rows(db, "SELECT max(epoch) FROM epoch_metrics") == [(2,)]


def test_a_full_stdout_and_stderr_do_not_strand_the_run(db, tmp_path, procs):
    """`hlbd train > /dev/full 2> /dev/full`, progress bar on: every line is lost."""
    with open("/dev/full", "w") as full:
        proc = procs.hlbd("train", "--db", db, "--runs-dir", tmp_path / "runs", "--d-model",
                          "32", "--n-layers", "1", "--n-heads", "2", "--d-ff", "64",
                          "--device", "cpu", "--epochs", "2", stdout=full, stderr=full)
        code = proc.wait(timeout=180)

    assert code == 1  # the output could not be written; the run could
    ((run_id, status, folder),) = rows(db, "SELECT run_id, status, run_dir FROM runs")
    assert status == "finished"
    assert rows(db, "SELECT count(*) FROM epoch_metrics") == [(2,)]
    assert (tmp_path / "runs" / run_id / "checkpoint_epoch_2.pt").exists()
    assert folder == str(tmp_path / "runs" / run_id)
