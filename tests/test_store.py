"""The run store: schema through Alembic, WAL, concurrent creators and writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from hlbd.cli import main
from hlbd.errors import ClaimLostError, UnknownRunError
from hlbd.recorder import store_locked
from hlbd.store import Store, connect, live_status, schema, utcnow

OPEN_AND_WRITE = textwrap.dedent("""
    import sys, time
    from hlbd.store import Store
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    store = Store.open(sys.argv[1])
    run_id = store.create_run("p" + sys.argv[3], {"k": 1}, {"d": 1})
    for epoch in range(1, 21):
        store.record_epoch(run_id, 1, {"epoch": epoch, "loss": 1.0 / epoch, "grad_norm": 0.5,
                                       "lr": 1e-3},
                           [{"step": epoch, "epoch": epoch, "loss": 1.0, "grad_norm": 0.5,
                             "lr": 1e-3}])
    store.finish_run(run_id, 1, "finished")
""")


def test_processes_opening_a_brand_new_database_at_once_all_succeed(tmp_path):
    import time

    db = tmp_path / "new.db"
    start = time.time() + 3.0  # every process is imported and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AND_WRITE, str(db), str(start),
                               str(i)], stderr=subprocess.PIPE, text=True)
             for i in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM runs WHERE status = 'finished'").fetchone() == (6,)
    assert conn.execute("SELECT count(*) FROM epoch_metrics").fetchone() == (120,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
        schema.head_revision(),)


def test_new_database_is_created_at_the_newest_revision_with_the_public_views(tmp_path):
    db = tmp_path / "fresh.db"
    Store.open(str(db)).close()
    conn = sqlite3.connect(db)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"runs", "segments", "epochs", "steps", "checkpoints", "anomalies",
            "epoch_metrics", "step_metrics", "alembic_version"} <= names
    columns = {r[1] for r in conn.execute("PRAGMA table_info(epoch_metrics)")}
    assert {"run_id", "epoch", "loss", "grad_norm", "grad_norm_max", "lr"} <= columns
    run_columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    assert {"run_id", "name", "status", "created_at", "finished_at", "config",
            "dataset_stats"} <= run_columns


def test_the_head_revision_constant_is_the_newest_migration():
    # Stores read the head from a constant (no Alembic import per command): a new
    # migration must move it, or new databases would be refused as "older than head".
    assert schema.head_revision() == schema.script_head()


def test_db_commands_report_and_apply_the_revision(tmp_path):
    db = str(tmp_path / "cli.db")
    result = CliRunner().invoke(main, ["db", "upgrade", "--db", db])
    assert result.exit_code == 0 and "(head)" in result.output
    result = CliRunner().invoke(main, ["db", "current", "--db", db])
    head = schema.head_revision()
    assert result.exit_code == 0 and f"revision {head}; head {head}" in result.output


def test_db_setting_comes_from_flag_then_environment_then_working_directory(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HLBD_DB", raising=False)
    assert connect.resolve_db_url() == f"sqlite:///{tmp_path / 'hlbd.db'}"
    monkeypatch.setenv("HLBD_DB", str(tmp_path / "env.db"))
    assert connect.resolve_db_url() == f"sqlite:///{tmp_path / 'env.db'}"
    assert connect.resolve_db_url("postgresql://h/db") == "postgresql://h/db"


def test_unique_prefix_finds_a_run_and_ambiguous_prefix_lists_candidates(store):
    a = store.create_run("a", {}, {}, run_id="abc111")
    store.create_run("b", {}, {}, run_id="abc222")
    assert store.resolve_run_id("abc1") == a
    with pytest.raises(UnknownRunError, match="ambiguous: abc111, abc222"):
        store.resolve_run_id("abc")


def some_steps(first: int, last: int) -> list[dict]:
    return [{"step": n, "epoch": 1, "loss": 1.0 / n, "grad_norm": 0.5, "lr": 1e-3}
            for n in range(first, last + 1)]


def test_step_writes_refresh_the_heartbeat_and_stop_once_the_claim_is_lost(store):
    # On SQLite the step writes go through the driver's connection: the heartbeat they
    # store must read back as the time it is, and the claim check must still hold.
    run_id = store.create_run("beat", {}, {})
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE runs SET heartbeat_at = :then"),
                     {"then": utcnow() - timedelta(minutes=3)})
    assert live_status(store.get_run(run_id)) == "stale"
    store.record_steps(run_id, 1, some_steps(1, 3))
    run = store.get_run(run_id)
    assert abs(run["heartbeat_at"] - utcnow()) < timedelta(seconds=60)
    assert live_status(run) == "running"
    with store.engine.begin() as conn:  # a later segment judged this one crashed
        conn.execute(text("UPDATE segments SET status = 'crashed'"))
    with pytest.raises(ClaimLostError, match="taken over by a later segment"):
        store.record_steps(run_id, 1, some_steps(4, 6))
    assert [s["step"] for s in store.steps(run_id)] == [1, 2, 3]


def test_a_step_write_that_finds_the_store_locked_says_so_and_writes_nothing(
        tmp_path, monkeypatch):
    monkeypatch.setattr(connect, "BUSY_TIMEOUT_MS", 100)
    db = tmp_path / "locked.db"
    store = Store.open(str(db))
    run_id = store.create_run("locked", {}, {})
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sa_exc.OperationalError) as caught:
            store.record_steps(run_id, 1, some_steps(1, 3))
        assert store_locked(caught.value)  # what the recorder waits out
    finally:
        other.execute("COMMIT")
        other.close()
    assert store.steps(run_id) == []
    store.record_steps(run_id, 1, some_steps(1, 3))  # the same write, once it is free
    assert [s["step"] for s in store.steps(run_id)] == [1, 2, 3]
