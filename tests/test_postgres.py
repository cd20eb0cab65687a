"""A team's store on a PostgreSQL server: created once by many processes, refused when
newer, written by 8 trainers at once, resumed from another machine.

Every test here needs the server (HLBD_TEST_PG); tests/helpers/backends.py says how to get one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.backends import postgres_only, rows
from helpers.exact import exact_metrics
from helpers.tiny import RESUMABLE, tiny_config, tiny_flags
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from hlbd.cli import main
from hlbd.errors import SchemaTooNewError
from hlbd.report import REPORT_NAME
from hlbd.runner import start_run
from hlbd.store import Store, schema

pytestmark = postgres_only

REPO = Path(__file__).resolve().parents[1]


def run_all(commands: list[list[str]], timeout: float = 300) -> list[tuple[int, str, str]]:
    """Start every command at once, each in its own process group; wait for all of them
    (killing every group if one hangs). Returns (exit status, stdout, stderr) each."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, start_new_session=True) for c in commands]
    deadline = time.monotonic() + timeout
    try:
        out = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, out)]


OPEN_AND_WRITE = textwrap.dedent("""
    import sys, time
    from hlbd.store import Store
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.001)
    store = Store.open(sys.argv[1])
    run_id = store.create_run("p" + sys.argv[3], {"k": 1}, {"d": 1})
    for epoch in range(1, 11):
        store.record_epoch(run_id, 1, {"epoch": epoch, "loss": 1.0 / epoch, "lr": 1e-3},
                           [{"step": epoch, "epoch": epoch, "loss": 1.0, "grad_norm": 0.5,
                             "lr": 1e-3}])
    store.finish_run(run_id, 1, "finished")
""")


def test_processes_creating_a_new_server_database_at_once_all_succeed(backend, pg_server):
    url = pg_server().empty()  # no tables at all, as a team's new database starts
    start = time.time() + 3.0  # every process is imported and waiting by then
    results = run_all([[sys.executable, "-c", OPEN_AND_WRITE, url, str(start), str(i)]
                       for i in range(8)])
    assert [r[0] for r in results] == [0] * 8, [r[2] for r in results]
    assert rows(url, "SELECT count(*) FROM runs WHERE status = 'finished'") == [(8,)]
    assert rows(url, "SELECT count(*) FROM epoch_metrics") == [(80,)]
    assert rows(url, "SELECT version_num FROM alembic_version") == [
        (schema.head_revision(),)]
    pg_server().drop(url)


def test_a_server_database_at_an_unknown_revision_is_refused(db_url):
    engine = create_engine(db_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    engine.dispose()

    with pytest.raises(SchemaTooNewError, match="newer hlbd"):
        Store.open(db_url)
    result = CliRunner().invoke(main, ["runs", "--db", db_url])
    assert result.exit_code == 1 and "schema revision 'f00dfeed'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert rows(db_url, "SELECT version_num FROM alembic_version") == [("f00dfeed",)]


def test_eight_trainers_writing_at_once_lose_nothing(db_url, tmp_path):
    # --step-flush-interval 1: every step is its own transaction, the most writes.
    results = run_all([[sys.executable, "-m", "hlbd", "train", "--db", db_url,
                        "--runs-dir", str(tmp_path / "runs"),
                        *tiny_flags(dropout=0.2, epochs=2, seed=i, step_flush_interval=1),
                        "--name", f"w{i}"]
                       for i in range(8)])

    assert [r[0] for r in results] == [0] * 8, [r[2][-2000:] for r in results]
    store = Store.open(db_url)
    runs = store.list_runs()
    assert sorted(r["name"] for r in runs) == [f"w{i}" for i in range(8)]
    for run in runs:
        assert run["status"] == "finished" and run["epochs"] == 2
        # Every step and epoch the trainer reported is in the store, once, in order.
        report = json.loads((Path(run["run_dir"]) / REPORT_NAME).read_text())
        steps = store.steps(run["run_id"])
        assert [s["loss"] for s in steps] == report["batch_losses"]
        assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
        assert [e["loss"] for e in store.epochs(run["run_id"])] == report["control_losses"]
        assert [c["epoch"] for c in store.checkpoints(run["run_id"])] == [2]
    store.close()


# The same hlbd command, on a machine with another name: the store records the hostname
# and judges liveness by it, so this is what another machine looks like to the store.
ON_HOST = textwrap.dedent("""
    import socket, sys
    socket.gethostname = lambda: sys.argv[1]
    from hlbd.cli import main
    main(sys.argv[2:], prog_name="hlbd")
""")


def test_a_run_resumed_on_another_machine_continues_the_same_history(db_url, tmp_path):
    runs_dir = str(tmp_path / "shared_runs")  # checkpoints on a filesystem both see
    ((status, out, err),) = run_all([[
        sys.executable, "-c", ON_HOST, "machine-a", "train", "--db", db_url,
        "--runs-dir", runs_dir, *tiny_flags(RESUMABLE, epochs=2), "--name", "moved"]])
    assert status == 0, err
    run_id = out.splitlines()[0].removeprefix("run_id: ")

    ((status, _, err),) = run_all([[
        sys.executable, "-c", ON_HOST, "machine-b", "resume", "--db", db_url,
        "--run-id", run_id[:8], "--epochs", "4", "--quiet"]])
    assert status == 0, err

    store = Store.open(db_url)
    assert [(s["segment"], s["start_epoch"], s["hostname"], s["status"])
            for s in store.segments(run_id)] == [(1, 0, "machine-a", "finished"),
                                                 (2, 2, "machine-b", "finished")]
    epochs = store.epochs(run_id)
    assert [(e["epoch"], e["segment"]) for e in epochs] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    straight = start_run(tiny_config(RESUMABLE, epochs=4), store, runs_root=tmp_path / "straight",
                         progress=False)
    assert exact_metrics(epochs) == exact_metrics(store.epochs(straight.run_id))
    steps = store.steps(run_id)
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    store.close()
