"""Another process holds the run database's write lock (a long import, a copy, a
backup): training goes on, the rows wait in the recorder's queue, and every one reaches
the store afterwards, in order (DESIGN invariant 12)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
from helpers.tiny import tiny_config

from hlbd.recorder import StoreRecorder
from hlbd.runner import StoppedBeforeStart, start_run
from hlbd.store import Store, connect

# Holds the write lock from "locked" until at least HOLD seconds have passed and a line
# arrives on stdin (or stdin closes), then prints "released". Times are time.time().
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
locked = time.time()
print("locked", locked, flush=True)
sys.stdin.readline()
time.sleep(max(0.0, locked + float(sys.argv[2]) - time.time()))
released = time.time()
conn.execute("COMMIT")
print("released", released, flush=True)
"""
HOLD_SECONDS = 10
# Only a safety net, so that a loop that does wait cannot hang the suite: the test
# fails if this is what ended the lock.
GIVE_UP_SECONDS = 90
BATCHES_PER_EPOCH = 9  # the bundled data's 143 pairs in batches of 16


class Locker:
    """The sqlite3 process that holds the lock; killed (its process group) on failure."""

    def __init__(self, db, hold: float):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(db), str(hold)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.watchdog = threading.Timer(GIVE_UP_SECONDS, self._give_up)
        self.gave_up = False
        word, at = self.proc.stdout.readline().split()
        assert word == "locked"
        self.locked_at = float(at)
        self.released_at: float | None = None
        self.watchdog.start()

    def release(self) -> float:
        """Ask for the release; returns when the lock is free (HOLD after locking at the
        earliest)."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.write("release\n")
            self.proc.stdin.close()
        word, at = self.proc.stdout.readline().split()
        assert word == "released"
        self.released_at = float(at)
        self.proc.wait(timeout=30)
        self.watchdog.cancel()
        return self.released_at

    def _give_up(self) -> None:
        self.gave_up = True
        self.proc.stdin.close()  # the locker commits and exits

    def kill(self) -> None:
        self.watchdog.cancel()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def utc(timestamp: float) -> datetime:
    """A time.time() as the store writes times: naive UTC."""
    return datetime.fromtimestamp(timestamp, UTC).replace(tzinfo=None)


def test_training_goes_on_while_another_process_holds_the_write_lock_and_every_row_lands_after(
        tmp_path, monkeypatch, caplog):
    # A busy timeout far shorter than the lock, so the writer's own waiting (try again
    # while the database says "locked") is what carries it through, not SQLite's.
    monkeypatch.setattr(connect, "BUSY_TIMEOUT_MS", 200)
    db = tmp_path / "runs.db"
    store = Store.open(str(db))
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
    locker: Locker | None = None
    calls = 0
    seen: dict[str, object] = {"while_locked": []}
    releasing: list[threading.Thread] = []

    def epochs_in_store() -> int:
        return reader.execute("SELECT count(*) FROM epochs").fetchone()[0]

    def should_stop() -> bool:
        """Polled by the training loop before every micro-batch: it drives the test."""
        nonlocal locker, calls
        calls += 1
        if locker is None:
            if epochs_in_store() >= 1:  # take the lock once the run is being recorded
                locker = Locker(db, HOLD_SECONDS)
                seen["epochs_at_lock"] = epochs_in_store()
                seen["calls_at_lock"] = calls
            return False
        if locker.released_at is None:
            seen["while_locked"].append((time.time(), epochs_in_store()))
            trained = (calls - seen["calls_at_lock"]) // BATCHES_PER_EPOCH
            if trained >= 3 and not releasing:
                # Three whole epochs trained under the lock: it may go once it has been
                # held HOLD_SECONDS; the loop goes on training meanwhile.
                releasing.append(threading.Thread(target=locker.release, daemon=True))
                releasing[0].start()
            return False
        seen.setdefault("calls_at_release", calls)
        # One more epoch after the release, then stop as Ctrl-C would.
        return calls - seen["calls_at_release"] >= BATCHES_PER_EPOCH

    caplog.set_level(logging.WARNING, logger="hlbd.recorder")
    try:
        outcome = start_run(tiny_config(epochs=10_000, save_interval=1, keep_checkpoints=0), store,
                            runs_root=tmp_path / "runs", progress=False,
                            should_stop=should_stop)
    finally:
        if locker is not None:
            locker.kill()
        reader.close()

    assert locker is not None and not locker.gave_up, "the loop stopped under the lock"
    assert locker.released_at - locker.locked_at >= HOLD_SECONDS
    # The lock held: nothing reached the store while it was held ...
    counts = {n for at, n in seen["while_locked"] if at < locker.released_at}
    assert counts == {seen["epochs_at_lock"]}
    assert outcome.status == "interrupted"
    run_id = outcome.run_id
    epochs = store.epochs(run_id)
    # ... yet training went on: the epochs trained meanwhile were written after it.
    numbers = [e["epoch"] for e in epochs]
    assert numbers == list(range(1, outcome.last_epoch + 1))
    under_lock = [e for e in epochs if e["epoch"] > seen["epochs_at_lock"]
                  and e["recorded_at"] >= utc(locker.released_at)]
    assert len(under_lock) >= 3
    assert not [e for e in epochs
                if utc(locker.locked_at) < e["recorded_at"] < utc(locker.released_at)]
    # Their checkpoints were saved on disk during the lock, not after it.
    checkpoints = store.checkpoints(run_id)
    assert [c["epoch"] for c in checkpoints] == numbers
    saved = {c["epoch"]: os.stat(c["path"]).st_mtime for c in checkpoints}
    assert sum(locker.locked_at < saved[e["epoch"]] < locker.released_at
               for e in under_lock) >= 2
    # Every row, in order: steps inserted in step order (those of the epoch the stop cut
    # short too), each epoch before its checkpoint.
    with sqlite3.connect(db) as conn:
        inserted = [s for (s,) in conn.execute("SELECT step FROM steps ORDER BY rowid")]
    assert inserted == list(range(1, len(inserted) + 1))
    assert 0 <= len(inserted) - BATCHES_PER_EPOCH * outcome.last_epoch < BATCHES_PER_EPOCH
    recorded = [e["recorded_at"] for e in epochs]
    assert recorded == sorted(recorded)
    by_epoch = {e["epoch"]: e for e in epochs}
    for c in checkpoints:
        assert by_epoch[c["epoch"]]["recorded_at"] <= c["created_at"]
    assert store.get_run(run_id)["status"] == "interrupted"
    waits = [r for r in caplog.records if "locked by another process" in r.getMessage()]
    assert waits, "the writer never had to wait for the lock"


def test_beyond_its_bound_the_queue_makes_the_loop_wait_and_says_so_once(
        tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(connect, "BUSY_TIMEOUT_MS", 200)
    db = tmp_path / "runs.db"
    store = Store.open(str(db))
    run_id = store.create_run("bound", {}, {})
    recorder = StoreRecorder(store, run_id, 1, tmp_path / "run", {}, {}, max_pending=25)
    batches = [[{"step": s, "epoch": 1, "loss": 1.0 / s, "grad_norm": 0.5, "lr": 1e-3}
                for s in range(first, first + 10)] for first in range(1, 101, 10)]
    caplog.set_level(logging.WARNING, logger="hlbd.recorder")
    locker = Locker(db, 0)
    handed_over = []

    def loop() -> None:
        for batch in batches:
            recorder.on_logged(lambda batch=batch: (batch, [], None), rows=len(batch))
            handed_over.append(batch[-1]["step"])

    training = threading.Thread(target=loop, daemon=True)
    try:
        training.start()
        # The writer holds the first batch (waiting for the lock) and one more fits in
        # the queue's 25 rows; the third must wait for room.
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while not [r for r in caplog.records if "recording is behind" in r.getMessage()]:
            assert time.monotonic() < deadline and training.is_alive()
            time.sleep(0.01)
        assert training.is_alive() and handed_over == [10, 20]
        locker.release()
        training.join(timeout=GIVE_UP_SECONDS)
        assert not training.is_alive()
        recorder.close()
    finally:
        locker.kill()
    assert handed_over == list(range(10, 101, 10))
    with sqlite3.connect(db) as conn:
        inserted = [s for (s,) in conn.execute("SELECT step FROM steps ORDER BY rowid")]
    assert inserted == list(range(1, 101))
    behind = [r for r in caplog.records if "recording is behind" in r.getMessage()]
    assert len(behind) == 1


START_HOLD_SECONDS = 3


def test_a_run_started_while_another_process_holds_the_lock_waits_for_it_and_then_starts(
        tmp_path, monkeypatch, caplog):
    # Opening the store reads without the lock; the run's first write waits it out.
    monkeypatch.setattr(connect, "BUSY_TIMEOUT_MS", 200)
    db = tmp_path / "runs.db"
    Store.open(str(db)).close()
    caplog.set_level(logging.WARNING, logger="hlbd.recorder")
    locker = Locker(db, START_HOLD_SECONDS)
    releasing = threading.Thread(target=locker.release, daemon=True)
    try:
        store = Store.open(str(db))
        releasing.start()
        outcome = start_run(tiny_config(epochs=1), store, runs_root=tmp_path / "runs",
                            progress=False)
    finally:
        locker.kill()
    releasing.join(timeout=30)
    assert not locker.gave_up and locker.released_at - locker.locked_at >= START_HOLD_SECONDS
    run = store.get_run(outcome.run_id)
    assert run["status"] == "finished" and run["created_at"] >= utc(locker.released_at)
    waits = [r.getMessage() for r in caplog.records
             if "locked by another process" in r.getMessage()]
    assert waits == [("the run database is locked by another process; the run starts "
                      "when it is free (Ctrl-C stops)")]


def test_a_stop_while_the_start_waits_for_the_lock_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(connect, "BUSY_TIMEOUT_MS", 200)
    db = tmp_path / "runs.db"
    store = Store.open(str(db))
    locker = Locker(db, 0)
    asked = []

    def should_stop() -> bool:
        asked.append(time.monotonic())
        return time.monotonic() - asked[0] > 1.0  # Ctrl-C a second into the wait

    try:
        with pytest.raises(StoppedBeforeStart, match="nothing was recorded"):
            start_run(tiny_config(epochs=1), store, runs_root=tmp_path / "runs",
                      progress=False, should_stop=should_stop)
    finally:
        locker.release()
        locker.kill()
    assert len(asked) > 3  # it did wait, asking each time the lock said no
    assert store.list_runs() == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM segments").fetchone() == (0,)
