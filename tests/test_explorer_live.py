"""The explorer reads while a trainer writes: read-only connections, no lock errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.tiny import tiny_flags

from hlbd.store import Store, buckets, connect

APP_DIR = Path(__file__).resolve().parents[1] / "app"


@pytest.fixture
def app_reads(monkeypatch):
    """The explorer's read path (app/reads.py), imported as Streamlit imports it."""
    monkeypatch.syspath_prepend(str(APP_DIR))
    import reads

    return reads


def test_explorer_reads_while_a_trainer_writes_and_the_run_finishes(tmp_path, app_reads):
    db = tmp_path / "live.db"
    Store.open(str(db)).close()
    url = connect.resolve_db_url(str(db))
    # Every step is its own write transaction: as many chances to collide as there can be.
    trainer = subprocess.Popen(
        [sys.executable, "-m", "hlbd", "train", "--db", str(db), "--name", "live",
         "--runs-dir", str(tmp_path / "runs"),
         *tiny_flags(epochs=8, save_interval=4, step_flush_interval=1, quiet=False)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, rounds = set(), 0
    try:
        while trainer.poll() is None:
            # The uncached functions under the app's caches: every call reads the file
            # (a run list of its own, read whole: app/run_list.py).
            for run in app_reads.RunList(app_reads.store.__wrapped__(url)).rows(()):
                seen.add(run["display_status"])
                app_reads.epochs.__wrapped__(url, run["run_id"], run["version"])
                span = app_reads.step_span.__wrapped__(url, run["run_id"], run["version"])
                if span:
                    app_reads.step_buckets.__wrapped__(url, run["run_id"], run["version"],
                                                       buckets.bucket_width(span["last_step"]))
                app_reads.flags.__wrapped__(url, run["run_id"], run["version"])
            app_reads.sql(url, "SELECT count(*) FROM step_metrics")
            rounds += 1
            time.sleep(0.01)  # on a 2-core machine, leave the trainer a core
    finally:
        out, err = trainer.communicate(timeout=300)
    assert trainer.returncode == 0, err
    assert "locked" not in err
    assert "running" in seen and rounds > 1  # the reads overlapped the writes
    store = Store.open(str(db))
    [run] = store.list_runs()
    assert run["status"] == "finished" and run["epochs"] == 8
    assert run["run_id"] in out
    store.close()
