"""One live segment per run, claimed atomically in the database: racing resumes, dead
holders taken over, a taken-over holder that wakes up writes nothing."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest
from helpers.backends import rows
from helpers.procs import finish, wait_until
from helpers.tiny import tiny_config, tiny_flags
from sqlalchemy import text

from hlbd.errors import RunClaimedError
from hlbd.runner import start_run
from hlbd.store import connect, utcnow


@pytest.fixture
def db(db_url):
    return db_url


def test_three_resumes_started_at_once_record_each_epoch_once(db, tmp_path, store, procs):
    first = start_run(tiny_config(epochs=3, save_interval=1), store,
                      runs_root=tmp_path / "runs", progress=False)

    racers = [procs.hlbd("resume", "--db", db, "--run-id", first.run_id, "--epochs", "6",
                         "--quiet") for _ in range(3)]
    results = [finish(p) for p in racers]

    winners = [r for r in results if r[0] == 0]
    losers = [r for r in results if r[0] != 0]
    assert len(winners) == 1, results
    for code, out, err in losers:
        assert code == 1 and out == ""
        (line,) = err.strip().splitlines()
        assert line.startswith(f"Error: run {first.run_id} ")
        assert any(why in line for why in ("still being written by process",
                                           "claimed by another", "taken over by another"))
    # Exactly one segment wrote: epochs 4-6 once, by segment 2, and nothing else.
    assert rows(db, "SELECT epoch, segment, superseded_by FROM epochs WHERE run_id = :run "
                    "ORDER BY epoch", run=first.run_id) == [
        (1, 1, None), (2, 1, None), (3, 1, None), (4, 2, None), (5, 2, None), (6, 2, None)]
    assert rows(db, "SELECT segment, status FROM segments WHERE run_id = :run",
                run=first.run_id) == [(1, "finished"), (2, "finished")]
    steps = [s["step"] for s in store.steps(first.run_id, include_superseded=True)]
    assert steps == list(range(1, len(steps) + 1))


CLAIM = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from hlbd.errors import RunClaimedError
    from hlbd.store import Store
    store = Store.open(sys.argv[1])
    start, said = float(sys.argv[3]), Path(sys.argv[4])
    while time.time() < start:
        pass
    try:
        print("won", store.begin_segment(sys.argv[2], 1), flush=True)
    except RunClaimedError as lost:
        print("lost", lost, flush=True)
    # Alive until every claimant has decided, as a trainer that won would be: a winner
    # gone before a slower claimant looks is a crashed holder, rightly taken over.
    (said / str(os.getpid())).touch()
    deadline = time.time() + 60
    while len(list(said.iterdir())) < int(sys.argv[5]) and time.time() < deadline:
        time.sleep(0.01)
""")


@pytest.mark.parametrize("holder", ["dead process", "none"])
def test_claims_made_at_the_same_instant_have_exactly_one_winner(db, store, procs, holder,
                                                                  tmp_path):
    """The claim itself, not a check before it: processes released at one instant."""
    run_id = store.create_run("r", {}, {})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    if holder == "dead process":  # segment 1 still 'running', its process gone
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE segments SET pid = :pid WHERE run_id = :run"),
                         {"pid": dead.pid, "run": run_id})
    else:
        store.finish_run(run_id, 1, "interrupted")
    start = time.time() + 2.5  # every process has imported hlbd and opened the store
    said = tmp_path / "decided"
    said.mkdir()
    claimants = [procs.python(CLAIM, db, run_id, start, said, 4) for _ in range(4)]
    outputs = [finish(p, timeout=120) for p in claimants]

    assert [code for code, _, _ in outputs] == [0] * 4, outputs
    said = sorted(out.split()[0] for _, out, _ in outputs)
    assert said == ["lost", "lost", "lost", "won"], outputs
    assert rows(db, "SELECT segment, status FROM segments WHERE run_id = :run "
                    "ORDER BY segment", run=run_id) == [
        (1, "crashed" if holder == "dead process" else "interrupted"), (2, "running")]


def test_a_stale_holder_on_another_host_is_taken_over_and_a_fresh_one_is_not(db, store):
    run_id = store.create_run("r", {}, {})
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE segments SET hostname = 'elsewhere', pid = 1")
    with pytest.raises(RunClaimedError, match="still being written by process 1 on "
                                              "elsewhere"):
        store.begin_segment(run_id, 0)
    before = rows(db, "SELECT * FROM segments")
    with store.engine.begin() as conn:  # its heartbeat stopped 3 minutes ago
        conn.execute(text("UPDATE runs SET heartbeat_at = :then"),
                     {"then": utcnow() - timedelta(minutes=3)})
    assert before == rows(db, "SELECT * FROM segments")

    assert store.begin_segment(run_id, 0) == 2
    assert [(s["segment"], s["status"]) for s in store.segments(run_id)] == [
        (1, "crashed"), (2, "running")]


def inside_a_write(db: str) -> bool:
    """Whether some process holds a write transaction open on the store: SQLite's write
    lock, or a server session idle inside a transaction."""
    path = connect.sqlite_path(connect.resolve_db_url(str(db)))
    if path is None:
        return bool(rows(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                             "current_database() AND state = 'idle in transaction'")[0][0])
    probe = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


def pause_between_writes(proc: subprocess.Popen, db: str) -> None:
    """SIGSTOP ``proc`` at a moment it is not inside a write, trying again until so: a
    process paused inside one holds its locks and every other writer waits on it (on
    SQLite, even a reader through a write engine), which is not what is tested here."""
    for _ in range(100):
        proc.send_signal(signal.SIGSTOP)
        if not inside_a_write(db):
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("the holder was inside a write at every try")


def test_a_taken_over_holder_that_wakes_up_stops_without_writing(db, tmp_path, store,
                                                                 procs):
    holder = procs.hlbd("train", "--db", db, "--runs-dir", tmp_path / "runs",
                        *tiny_flags(batch_size=4, epochs=500, save_interval=1),
                        "--name", "paused")
    wait_until(lambda: rows(db, "SELECT 1 FROM checkpoints WHERE epoch = "
                              "(SELECT max(epoch) FROM epochs)"), holder)
    pause_between_writes(holder, db)  # paused soon after a checkpoint row
    (run_id,) = [r[0] for r in rows(db, "SELECT run_id FROM runs")]
    paused_rows = rows(db, "SELECT count(*) FROM epochs WHERE segment = 1")[0][0]
    target = store.newest_checkpoint(run_id)["epoch"] + 1

    forced = procs.hlbd("resume", "--db", db, "--run-id", run_id, "--epochs", target,
                        "--force", "--quiet")
    assert finish(forced)[0] == 0
    holder.send_signal(signal.SIGCONT)
    code, _, err = finish(holder)

    assert code == 1
    assert f"run {run_id} was taken over by a later segment" in err
    assert rows(db, "SELECT count(*) FROM epochs WHERE segment = 1")[0][0] == paused_rows
    assert [(s["segment"], s["status"]) for s in store.segments(run_id)] == [
        (1, "crashed"), (2, "finished")]
    run = store.get_run(run_id)
    assert run["status"] == "finished" and run["error"] is None
    assert [e["epoch"] for e in store.epochs(run_id)] == list(range(1, target + 1))
