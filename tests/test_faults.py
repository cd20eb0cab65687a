"""Fault injection: kill -9 at seeded random moments of a real training process, and a
disk that fills up. After every fault the database is intact, the status true, and the
run resumes; at the end its effective history is each epoch once, steps 1..N, with the
numbers of a run that never stopped."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from click.testing import CliRunner
from helpers.backends import rows
from helpers.exact import exact_metrics
from helpers.procs import finish, wait_until
from helpers.tiny import tiny_flags

from hlbd.checkpoint import checkpoint_path, load_checkpoint
from hlbd.cli import main
from hlbd.config import TrainConfig
from hlbd.runner import start_run
from hlbd.store import Store

SEED = 20261127
KILLS = 20
PHASES = ("resume start", "steps", "epoch commit", "checkpoint write")
# Small batches and frequent step flushes: many steps, step commits and checkpoints.
FLAGS = tiny_flags(batch_size=8, save_interval=2, step_flush_interval=3, seed=3, dropout=0.1)


def _segments(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        return rows(db, "SELECT count(*) FROM segments")[0][0]
    except Exception:  # noqa: BLE001 - the schema is being created
        return 0


def _temp_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir()
            if p.name.startswith(".checkpoint_epoch_") and p.name.endswith(".tmp")]


def _temp_checkpoints_of(folders: list[Path]) -> list[Path]:
    return [p for folder in folders for p in _temp_checkpoints(folder)]


def _kill_at(phase: str, proc, db: Path, runs: Path, rng: random.Random) -> str:
    """Wait for the moment ``phase`` names in segment ``proc``, SIGKILL it there; says
    where the kill landed."""
    segment = _segments(db) + 1
    # Partial checkpoints an earlier kill left (the segment removes them once it runs).
    stale = set(_temp_checkpoints_of(list(runs.iterdir()) if runs.is_dir() else []))
    wait_until(lambda: _segments(db) >= segment, proc, every=0.005)  # claimed (or created)
    if phase == "resume start":
        time.sleep(rng.uniform(0, 0.15))  # model build, state restore, first batches
    elif phase == "steps":
        wait_until(lambda: rows(db, "SELECT 1 FROM steps WHERE segment = :s", s=segment), proc,
                 every=0.005)
        time.sleep(rng.uniform(0, 0.5))
    elif phase == "epoch commit":
        wait_until(lambda: rows(db, "SELECT 1 FROM epochs WHERE segment = :s", s=segment), proc,
                 every=0.002)
        time.sleep(rng.uniform(0, 0.01))  # report, anomaly rows, checkpoint decision
    else:  # mid checkpoint write: a temp file of this segment is there, not yet renamed
        folders = list(runs.iterdir()) if runs.is_dir() else []
        deadline = time.monotonic() + 20
        while not set(_temp_checkpoints_of(folders)) - stale:
            if time.monotonic() > deadline:
                phase = "checkpoint write (missed: killed after 20 s)"
                break
            folders = folders or (list(runs.iterdir()) if runs.is_dir() else [])
            time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if phase == "checkpoint write" and not set(
            _temp_checkpoints_of(list(runs.iterdir()))) - stale:
        phase = "checkpoint write (just renamed)"
    ((steps, epochs),) = rows(db, "SELECT (SELECT count(*) FROM steps WHERE segment = :s), "
                                  "(SELECT count(*) FROM epochs WHERE segment = :s)",
                              s=segment)
    print(f"kill {segment:2d}: {phase:<16} after {steps:3d} step rows, {epochs} epochs")
    return phase


def _check_after_kill(db: Path) -> str | None:
    """The database is intact and the run (if it exists yet) shows as crashed."""
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    ids = rows(db, "SELECT run_id FROM runs")
    if not ids:
        return None
    store = Store.open_read_only(str(db))
    try:
        run = store.get_run(ids[0][0])
        assert run["display_status"] == "crashed", run["display_status"]
        # No checkpoint row points at a file that is missing or half written.
        for candidate in store.checkpoint_candidates(run["run_id"]):
            assert load_checkpoint(candidate["path"])["epoch"] == candidate["epoch"]
    finally:
        store.close()
    listing = CliRunner().invoke(main, ["runs", "--db", str(db)]).output
    assert "crashed" in next(line for line in listing.splitlines() if ids[0][0] in line)
    return ids[0][0]


# Starts `hlbd` commands as forked copies of one process that imported hlbd (and torch)
# once: each is a process of its own running the CLI's main(), as `python -m hlbd` would,
# without paying the 2 s import twenty times. Children are reaped the moment they end, so
# a killed one is gone (not a zombie that still looks alive).
FORKER = textwrap.dedent("""
    import json, os, signal, sys
    from hlbd.cli import main
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for line in sys.stdin:
        argv, log = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(out, 1)
            os.dup2(out, 2)
            try:
                main(argv, prog_name="hlbd")
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(pid, flush=True)
""")


class Forked:
    """A forked `hlbd` process, with the bits of Popen the waits here use."""

    def __init__(self, forker, argv: list, log: Path):
        forker.stdin.write(json.dumps([[str(a) for a in argv], str(log)]) + "\n")
        forker.stdin.flush()
        self.pid = int(forker.stdout.readline())
        self.log = log
        self.returncode = None

    def poll(self):
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            self.returncode = -9
        return self.returncode

    def communicate(self):
        return "", self.log.read_text()

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def kill(self):
        with contextlib.suppress(ProcessLookupError):
            self.send_signal(signal.SIGKILL)

    def wait(self, timeout):
        wait_until(lambda: self.poll() is not None, timeout=timeout, every=0.005)
        return self.returncode


def test_kill_9_at_seeded_moments_never_breaks_the_record(tmp_path, procs):
    rng = random.Random(SEED)
    plan = [PHASES[i % len(PHASES)] for i in range(KILLS)]
    rng.shuffle(plan)
    db, runs = tmp_path / "runs.db", tmp_path / "runs"
    landed, run_id = [], None
    forker = procs.python(FORKER, stdin=subprocess.PIPE, stderr=None)

    for n, phase in enumerate(plan):
        if run_id is None:
            argv = ["train", "--db", db, "--runs-dir", runs, *FLAGS, "--epochs", "1000",
                    "--name", "faults"]
        else:
            argv = ["resume", "--db", db, "--run-id", run_id, "--epochs", "1000", "--quiet"]
        proc = Forked(forker, argv, tmp_path / f"segment_{n}.log")
        landed.append(_kill_at(phase, proc, db, runs, rng))
        run_id = _check_after_kill(db)
    forker.stdin.close()

    print("kills landed:", dict(Counter(landed)))  # shown with pytest -s
    assert len(landed) == KILLS
    store = Store.open(str(db))
    checkpointed = store.newest_checkpoint(run_id)
    recorded = max((e["epoch"] for e in store.epochs(run_id)), default=0)
    total = max(recorded, checkpointed["epoch"] if checkpointed else 0) + 1
    final = procs.hlbd("resume", "--db", db, "--run-id", run_id, "--epochs", total, "--quiet")
    code, _, err = finish(final)
    assert code == 0, err

    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    effective = store.epochs(run_id)
    assert [e["epoch"] for e in effective] == list(range(1, total + 1))
    steps = [s["step"] for s in store.steps(run_id)]
    assert steps == list(range(1, len(steps) + 1))
    assert len(steps) == sum(e["steps"] for e in effective)
    segments = store.segments(run_id)
    assert len(segments) == KILLS + 1  # every kill came after its segment's claim
    assert [s["status"] for s in segments] == ["crashed"] * (len(segments) - 1) + [
        "finished"]
    assert store.get_run(run_id)["status"] == "finished"
    assert _temp_checkpoints(runs / run_id) == []  # partial writes cleared on resume
    # The numbers of a run that never stopped.
    config = TrainConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, dropout=0.1,
                         device="cpu", batch_size=8, save_interval=0, seed=3,
                         epochs=total)
    straight = start_run(config, store, runs_root=tmp_path / "straight", progress=False)
    assert exact_metrics(effective) == exact_metrics(store.epochs(straight.run_id))
    store.close()


# A checkpoint (about 2 MB) larger than anything the database writes in two epochs.
BIG = ["--d-model", "128", "--n-layers", "1", "--n-heads", "2", "--d-ff", "256",
       "--device", "cpu", "--quiet"]


def test_a_full_disk_fails_the_run_clearly_and_keeps_the_previous_checkpoint(tmp_path,
                                                                              procs):
    db, runs = tmp_path / "runs.db", tmp_path / "runs"
    first = procs.hlbd("train", "--db", db, "--runs-dir", runs, *BIG, "--epochs", "1",
                       "--save-interval", "1")
    code, out, err = finish(first)
    assert code == 0, err
    run_id = out.splitlines()[0].removeprefix("run_id: ")
    kept = checkpoint_path(runs / run_id, 1)
    size, digest = kept.stat().st_size, hashlib.sha256(kept.read_bytes()).hexdigest()
    limit = size // 2  # no file of this process may grow past it: the next checkpoint
    assert max(p.stat().st_size for p in tmp_path.iterdir() if p.is_file()) < limit

    def file_size_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = procs.start([sys.executable, "-m", "hlbd", "resume", "--db", str(db), "--run-id",
                        run_id, "--epochs", "2", "--quiet"], preexec_fn=file_size_limit)
    code, out, err = finish(full)

    target = checkpoint_path(runs / run_id, 2)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"Error: run {run_id} failed: {target}: could not write the checkpoint (File too "
        "large); the checkpoints written before it are intact")
    ((status, error),) = rows(db, "SELECT status, error FROM runs")
    assert status == "failed" and f"{target}: could not write the checkpoint" in error
    assert rows(db, "SELECT epoch FROM checkpoints") == [(1,)]
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == digest
    assert load_checkpoint(kept)["epoch"] == 1
    assert not target.exists() and not _temp_checkpoints(runs / run_id)

    again = procs.hlbd("resume", "--db", db, "--run-id", run_id, "--epochs", "2", "--quiet")
    assert finish(again)[0] == 0
    assert rows(db, "SELECT epoch, segment FROM epoch_metrics ORDER BY epoch") == [
        (1, 1), (2, 3)]
